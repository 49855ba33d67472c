"""Settings: one frozen pydantic-settings object per service, built once in ``main``.

Values come from ``LITHOWATCH_*`` environment variables or a dotenv-style file
(``LITHOWATCH_SETTINGS_FILE`` or ``--settings-file``). Secrets are ``SecretStr``
and never printed. Invalid settings fail at start with one clear line.
"""

from __future__ import annotations

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


def load_settings(cls: type[S], settings_file: str | Path | None = None, **overrides: Any) -> S:
    """Build settings from the environment (and an optional file), or raise ConfigError."""
    file = settings_file or os.environ.get("LITHOWATCH_SETTINGS_FILE")
    if file is not None and not Path(file).is_file():
        raise ConfigError(f"settings file {file} does not exist")
    try:
        return cls(_env_file=file, **overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"LITHOWATCH_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc


def metrics_port_for(settings: StageSettings, service: str) -> int:
    if settings.metrics_port is not None:
        return settings.metrics_port
    return DEFAULT_METRICS_PORTS.get(service, 9100)
