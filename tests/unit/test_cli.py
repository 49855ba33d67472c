"""The command line's own surface: --version, the service registry, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from app.registry import SERVICES, available_services


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"lithowatch {version('lithowatch')}"


def test_every_registered_service_loads_its_main() -> None:
    assert available_services() == ["dedupe", "align", "embed", "novelty", "explain"]
    for load in SERVICES.values():
        assert callable(load())


def test_an_unknown_service_is_one_line_with_exit_code_2(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["service", "nonesuch"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("lithowatch: error: unknown service 'nonesuch'") and "\n" not in err


def test_global_options_work_before_and_after_the_command() -> None:
    from app.cli import hoist_global_options

    assert hoist_global_options(["topics", "--settings-file", "a.env"]) == [
        "--settings-file",
        "a.env",
        "topics",
    ]
    assert hoist_global_options(["--settings-file=a.env", "tail", "t", "--log-level", "DEBUG"]) == [
        "--settings-file",
        "a.env",
        "--log-level",
        "DEBUG",
        "tail",
        "t",
    ]
    assert hoist_global_options(["tail", "t", "--", "--settings-file", "x"]) == [
        "tail",
        "t",
        "--",
        "--settings-file",
        "x",
    ]


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_settings_file_given_after_the_command_is_read(
    where: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.env")
    argv = (
        ["--settings-file", missing, "topics"]
        if where == "before"
        else ["topics", "--settings-file", missing]
    )
    assert main(argv) == 2
    assert f"settings file {missing} does not exist" in capfd.readouterr().err


def test_a_command_imports_only_its_own_module_so_tail_does_not_pay_for_torch() -> None:
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from app.cli import build_parser\n"
        "parser = build_parser(command='tail')\n"
        "assert 'tail' in parser._subparsers._group_actions[0].choices\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'faiss', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_every_command_is_registered_by_the_module_the_table_names() -> None:
    import argparse
    import importlib

    from app.cli import COMMAND_MODULES

    for commands, module, attr in COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        getattr(importlib.import_module(module), attr)(sub)
        assert sorted(sub.choices) == sorted(commands), module
