"""Settings: one frozen pydantic-settings object per service, built once in ``main``.

Values come from, strongest first: ``LITHOWATCH_*`` environment variables, a
dotenv-style file (``LITHOWATCH_SETTINGS_FILE`` or ``--settings-file``, before or
after the subcommand), and the connection file of a running ``lithowatch up``
(:func:`connection_file`), so a second terminal reaches the stack ``up`` started
without copying its address. Secrets are ``SecretStr`` and never printed. Invalid
settings fail at start with one clear line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError

DEFAULT_METRICS_PORTS = {
    "dedupe": 9101,
    "align": 9102,
    "embed": 9103,
    "novelty": 9104,
    "explain": 9105,
    "simfarm": 9106,
}


class CommonSettings(BaseSettings):
    """Settings every lithowatch process shares."""

    model_config = SettingsConfigDict(env_prefix="LITHOWATCH_", frozen=True, extra="ignore")

    # Kafka (security settings pass straight through to kafka-python)
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_check_hostname: bool = True
    kafka_compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "none"
    kafka_max_message_bytes: int = Field(8 * 1024 * 1024, gt=1024)
    partitions: int = Field(4, ge=1, le=1024)

    # Redis
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_password: SecretStr | None = None
    redis_ssl_ca_certs: Path | None = None

    # Blob store and images
    blob_root: Path = Path(".lithowatch/blobs")
    inline_image_limit_bytes: int = Field(96 * 1024, ge=0)
    max_image_pixels: int = Field(4096 * 4096, gt=0)


class StageSettings(CommonSettings):
    """Settings of a consuming stage (the runtime reads these)."""

    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(None, ge=0, le=65535)
    batch_max_messages: int = Field(32, ge=1, le=10_000)
    batch_max_wait_ms: int = Field(50, ge=0, le=60_000)
    max_poll_interval_ms: int = Field(10_000, ge=1_000)
    session_timeout_ms: int = Field(10_000, ge=1_000)
    retry_attempts: int = Field(5, ge=0)
    retry_backoff_seconds: float = Field(0.2, gt=0)
    retry_backoff_max_seconds: float = Field(10.0, gt=0)
    group_suffix: str = ""
    # A record that ended the stage process this many times is dead-lettered as ``crashed``
    # (counted per host in ``state_dir``; see shared/attempts.py).
    crash_attempts: int = Field(3, ge=1, le=100)
    state_dir: Path = Path(".lithowatch/state")
    # Added to the process's nice value at start: on a host the stages share, stages other
    # than the embedder can yield the CPU to it (``lithowatch up`` does; see SHARED_HOST_NICE).
    cpu_nice: int = Field(0, ge=0, le=19)


S = TypeVar("S", bound=BaseSettings)

log = logging.getLogger("lithowatch.settings")

# ``lithowatch up`` writes the address of what it started here (in its workdir) and removes it when
# it stops; every other command run from the same folder reads it (see ``connection_file``).
DEFAULT_RUN_DIR = Path(".lithowatch/run")
CONNECTION_FILE_NAME = "connection.env"
UP_PID_KEY = "LITHOWATCH_UP_PID"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def read_connection_pid(path: Path) -> int | None:
    """The pid of the ``lithowatch up`` that wrote ``path``, or None when the file names none."""
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == UP_PID_KEY and value.strip().isdigit():
                return int(value.strip())
    except OSError:
        return None
    return None


def live_connection_file(path: Path) -> bool:
    """Whether ``path`` is a connection file whose ``lithowatch up`` is still running."""
    pid = read_connection_pid(path)
    return pid is not None and _pid_alive(pid)


def connection_file() -> Path | None:
    """The connection file to read, if any: ``LITHOWATCH_CONNECTION_FILE`` when set (empty: none),
    else ``.lithowatch/run/connection.env`` under the current folder; only while the ``lithowatch up``
    that wrote it runs (a file left by a killed ``up`` is ignored, with a warning)."""
    configured = os.environ.get("LITHOWATCH_CONNECTION_FILE")
    if configured is not None and not configured.strip():
        return None
    path = Path(configured) if configured else DEFAULT_RUN_DIR / CONNECTION_FILE_NAME
    if not path.is_file():
        if configured:
            raise ConfigError(f"LITHOWATCH_CONNECTION_FILE: {path} does not exist")
        return None
    if not live_connection_file(path):
        log.warning("ignoring %s: the lithowatch up that wrote it is no longer running", path)
        return None
    return path


def load_settings(
    cls: type[S], settings_file: str | Path | None = None, *, connection: bool = True, **overrides: Any
) -> S:
    """Build settings from the environment, an optional settings file and (unless ``connection`` is
    False) a running ``lithowatch up``'s connection file, or raise ConfigError."""
    file = settings_file or os.environ.get("LITHOWATCH_SETTINGS_FILE")
    if file is not None and not Path(file).is_file():
        raise ConfigError(f"settings file {file} does not exist")
    files: list[str | Path] = []
    running = connection_file() if connection else None
    if running is not None:
        files.append(running)
    if file is not None:
        files.append(file)  # later files win over earlier ones
    try:
        return cls(_env_file=tuple(files) or None, **overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"LITHOWATCH_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc


def metrics_port_for(settings: StageSettings, service: str) -> int:
    if settings.metrics_port is not None:
        return settings.metrics_port
    return DEFAULT_METRICS_PORTS.get(service, 9100)
