"""The embedded Redis requires the stack's random password, also after a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from app.launcher import EmbeddedStack
from shared.display import mask_url

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_only(tmp_path: Path) -> Iterator[EmbeddedStack]:
    """The stack's Redis alone (the broker is "external" and never contacted)."""
    stack = EmbeddedStack(workdir=tmp_path / "stack", kafka_bootstrap="127.0.0.1:1")
    stack.start(topics=False)
    try:
        yield stack
    finally:
        stack.stop()


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)


def test_redis_refuses_clients_without_the_password(redis_only: EmbeddedStack) -> None:
    parts = urlsplit(redis_only.redis)
    assert parts.password and len(parts.password) >= 32
    assert client(redis_only.redis).ping() is True
    assert redis_only.env()["LITHOWATCH_REDIS_URL"] == redis_only.redis
    with pytest.raises(redis.AuthenticationError):
        client(f"redis://{parts.hostname}:{parts.port}/0").ping()
    with pytest.raises(redis.AuthenticationError):
        client(f"redis://:wrong@{parts.hostname}:{parts.port}/0").ping()


def test_the_password_is_nowhere_a_local_user_or_a_log_could_see_it(redis_only: EmbeddedStack) -> None:
    password = urlsplit(redis_only.redis).password
    assert password is not None
    cmdline = Path(f"/proc/{redis_only.child('redis').pid}/cmdline").read_bytes()
    assert password.encode() not in cmdline
    assert not (redis_only.workdir / "redis.conf").exists()
    assert password not in repr(redis_only) and password not in mask_url(redis_only.redis)


def test_each_stack_has_its_own_password(tmp_path: Path, redis_only: EmbeddedStack) -> None:
    other = EmbeddedStack(workdir=tmp_path / "other", kafka_bootstrap="127.0.0.1:1").start(topics=False)
    try:
        assert urlsplit(other.redis).password != urlsplit(redis_only.redis).password
    finally:
        other.stop()


def test_a_restarted_redis_keeps_the_password_and_the_data(redis_only: EmbeddedStack) -> None:
    url = redis_only.redis
    client(url).set("lithowatch:test", b"kept")
    redis_only.restart_redis()
    assert redis_only.redis == url
    assert client(url).get("lithowatch:test") == b"kept"
    parts = urlsplit(url)
    with pytest.raises(redis.AuthenticationError):
        client(f"redis://{parts.hostname}:{parts.port}/0").ping()
