"""Settings from a running `lithowatch up`'s connection file: read while it runs, below the user's own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import CommonSettings, connection_file, load_settings


def write(path: Path, pid: int, **values: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"LITHOWATCH_UP_PID={pid}", *(f"LITHOWATCH_{k.upper()}={v}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def in_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LITHOWATCH_CONNECTION_FILE", raising=False)
    for name in ("LITHOWATCH_KAFKA_BOOTSTRAP", "LITHOWATCH_PARTITIONS", "LITHOWATCH_SETTINGS_FILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_a_running_ups_file_in_the_current_folder_is_read_by_default(in_folder: Path) -> None:
    write(in_folder / ".lithowatch/run/connection.env", os.getpid(), kafka_bootstrap="10.0.0.1:9999")
    settings = load_settings(CommonSettings)
    assert settings.kafka_bootstrap == "10.0.0.1:9999"


def test_a_file_left_by_a_stopped_up_is_ignored(in_folder: Path) -> None:
    dead = subprocess.Popen(["true"])  # a pid that has certainly exited (reaped)
    dead.wait()
    write(in_folder / ".lithowatch/run/connection.env", dead.pid, kafka_bootstrap="10.0.0.1:9999")
    assert connection_file() is None
    assert load_settings(CommonSettings).kafka_bootstrap == "127.0.0.1:9092"


def test_the_environment_and_a_settings_file_win_over_the_connection_file(
    in_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        in_folder / ".lithowatch/run/connection.env",
        os.getpid(),
        kafka_bootstrap="10.0.0.1:1",
        partitions="7",
    )
    own = in_folder / "own.env"
    own.write_text("LITHOWATCH_PARTITIONS=9\n")
    settings = load_settings(CommonSettings, own)
    assert (settings.kafka_bootstrap, settings.partitions) == ("10.0.0.1:1", 9)
    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", "10.0.0.2:2")
    assert load_settings(CommonSettings, own).kafka_bootstrap == "10.0.0.2:2"


def test_the_file_can_be_named_or_turned_off(in_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = write(in_folder / "other/connection.env", os.getpid(), kafka_bootstrap="10.0.0.3:3")
    monkeypatch.setenv("LITHOWATCH_CONNECTION_FILE", str(elsewhere))
    assert load_settings(CommonSettings).kafka_bootstrap == "10.0.0.3:3"
    monkeypatch.setenv("LITHOWATCH_CONNECTION_FILE", "")
    assert load_settings(CommonSettings).kafka_bootstrap == "127.0.0.1:9092"
    monkeypatch.setenv("LITHOWATCH_CONNECTION_FILE", str(in_folder / "missing.env"))
    with pytest.raises(ConfigError, match=r"missing\.env does not exist"):
        load_settings(CommonSettings)


def test_up_itself_does_not_read_a_connection_file(in_folder: Path) -> None:
    write(in_folder / ".lithowatch/run/connection.env", os.getpid(), kafka_bootstrap="10.0.0.1:9999")
    assert load_settings(CommonSettings, connection=False).kafka_bootstrap == "127.0.0.1:9092"
