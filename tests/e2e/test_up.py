"""`lithowatch up` as a user runs it: no settings at all, and a second terminal that just works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.launcher import ChildProcess, wait_until

LITHOWATCH = [sys.executable, "-m", "app.cli"]
REPO = Path(__file__).resolve().parents[2]


def user_env(**extra: str) -> dict[str, str]:
    """A shell with no lithowatch settings at all (the connection file is found by folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITHOWATCH_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LITHOWATCH, *args],
        cwd=cwd,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def running_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChildProcess, Path]]:
    """`lithowatch up` with no settings and no options, in its own folder; always stopped."""
    folder = tmp_path_factory.mktemp("up")
    child = ChildProcess("up", [*LITHOWATCH, "up"], folder / "up.log", env=user_env(), cwd=folder).start()
    try:
        ready = wait_until(lambda: "services ready" in child.log_tail(80) or not child.alive(), 480)
        assert ready and child.alive(), child.log_tail()
        yield child, folder
    finally:
        child.stop(timeout_seconds=30)


def test_a_second_terminal_reaches_a_running_up_and_reads_a_verdict_for_every_result(
    running_up: tuple[ChildProcess, Path],
) -> None:
    up, folder = running_up
    log = up.log_tail(80)
    assert "using the default library" in log and "all 5 services ready" in log
    connection = folder / ".lithowatch/run/connection.env"
    assert connection.is_file() and (connection.stat().st_mode & 0o077) == 0  # holds the Redis password
    farm = run(["simfarm", "--count", "20", "--quiet", "--seed", "3", "--job-id", "second-terminal"], folder)
    assert farm.returncode == 0, farm.stderr
    own = folder / "own.env"
    own.write_text("LITHOWATCH_KAFKA_COMPRESSION=gzip\n")
    for where in ("before", "after"):  # a settings file on top of the connection file, either side
        options = ["--settings-file", str(own)]
        tail_args = ["tail", "lithowatch.verdicts.v1", "--from-beginning", "--json", "--max", "20"]
        tail_args += ["--timeout", "240"]
        shown = run(options + tail_args if where == "before" else tail_args + options, folder, timeout=300)
        assert shown.returncode == 0, shown.stderr
        verdicts = [json.loads(line) for line in shown.stdout.splitlines()]
        assert len({v["result_id"] for v in verdicts}) == 20
        assert {v["job_id"] for v in verdicts} == {"second-terminal"}
        assert {v["outcome"] for v in verdicts} <= {"scored", "duplicate"}
    readable = run(
        ["tail", "lithowatch.verdicts.v1", "--from-beginning", "--max", "1", "--timeout", "30"], folder
    )
    assert readable.returncode == 0 and readable.stdout.strip(), readable.stderr


def test_a_second_up_in_the_same_folder_is_refused_while_the_first_runs(
    running_up: tuple[ChildProcess, Path],
) -> None:
    _, folder = running_up
    second = run(["up", "--services", "dedupe", "--no-library", "--exit-when-ready"], folder, timeout=60)
    assert second.returncode == 2
    assert "already runs in" in second.stderr


def test_a_stopped_up_leaves_no_connection_file(running_up: tuple[ChildProcess, Path]) -> None:
    up, folder = running_up
    up.stop(timeout_seconds=30)
    assert not (folder / ".lithowatch/run/connection.env").exists()  # nothing to mislead the next command


def test_up_with_no_settings_at_all_runs_every_service_on_the_shipped_model_and_a_default_library(
    tmp_path: Path,
) -> None:
    cache = os.environ.get("LITHOWATCH_CACHE_DIR") or str(Path.home() / ".cache" / "lithowatch")
    done = subprocess.run(
        [*LITHOWATCH, "up", "--exit-when-ready"],
        cwd=tmp_path,
        env=user_env(LITHOWATCH_CACHE_DIR=cache),
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "using the default library" in out
    assert "reference entries" in out and "thresholds:" in out
    assert "all 5 services ready" in out
    assert not (tmp_path / ".lithowatch/run/connection.env").exists()
