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


@pytest.fixture
def up_dedupe(tmp_path: Path) -> Iterator[tuple[ChildProcess, Path]]:
    """`lithowatch up --services dedupe --no-library` in its own folder; always stopped."""
    child = ChildProcess(
        "up",
        [*LITHOWATCH, "up", "--services", "dedupe", "--no-library"],
        tmp_path / "up.log",
        env=user_env(),
        cwd=tmp_path,
    ).start()
    try:
        ready = wait_until(lambda: "services ready" in child.log_tail(50) or not child.alive(), 120)
        assert ready and child.alive(), child.log_tail()
        yield child, tmp_path
    finally:
        child.stop(timeout_seconds=30)


def test_a_second_terminal_reaches_a_running_up_with_no_address_given(
    up_dedupe: tuple[ChildProcess, Path],
) -> None:
    up, folder = up_dedupe
    connection = folder / ".lithowatch/run/connection.env"
    assert connection.is_file() and (connection.stat().st_mode & 0o077) == 0  # holds the Redis password
    farm = run(["simfarm", "--count", "20", "--quiet", "--seed", "3"], folder)
    assert farm.returncode == 0, farm.stderr
    own = folder / "own.env"
    own.write_text("LITHOWATCH_KAFKA_COMPRESSION=gzip\n")
    for where in ("before", "after"):  # a settings file on top of the connection file, either side
        options = ["--settings-file", str(own)]
        tail_args = ["tail", "lithowatch.unique.v1", "--from-beginning", "--max", "5", "--timeout", "30"]
        shown = run(options + tail_args if where == "before" else tail_args + options, folder)
        assert shown.returncode == 0, shown.stderr
        records = [json.loads(line) for line in shown.stdout.splitlines()]
        assert len(records) == 5 and all(r["result_id"] for r in records)
    topics = run(["topics"], folder)
    assert topics.returncode == 0 and "lithowatch.results.v1" in topics.stdout, topics.stderr
    up.stop(timeout_seconds=30)
    assert not connection.exists()  # a stopped up leaves nothing that would mislead the next command


def test_a_second_up_in_the_same_folder_is_refused_while_the_first_runs(
    up_dedupe: tuple[ChildProcess, Path],
) -> None:
    _, folder = up_dedupe
    second = run(["up", "--services", "dedupe", "--no-library", "--exit-when-ready"], folder, timeout=60)
    assert second.returncode == 2
    assert "already runs in" in second.stderr


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
