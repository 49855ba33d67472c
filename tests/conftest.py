"""Fixtures: a real broker and Redis, started by the product's own launcher."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.launcher import EmbeddedStack

# a `lithowatch up` the developer runs beside the tests must not redirect them (tests of the
# connection file set it themselves)
os.environ.setdefault("LITHOWATCH_CONNECTION_FILE", "")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    """A fresh broker (topics created) and Redis for one test; always stopped."""
    embedded = EmbeddedStack(workdir=tmp_path / "stack", partitions=4)
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def session_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    embedded = EmbeddedStack(workdir=tmp_path_factory.mktemp("session-stack"), partitions=4)
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def redis_url(session_stack: EmbeddedStack) -> str:
    return session_stack.redis
