"""The command line's own surface: --version, the service registry, one-line errors."""

from __future__ import annotations

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
