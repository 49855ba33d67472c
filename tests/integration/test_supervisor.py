"""The supervisor behind `up` and the demo: a service that exits is started again, on a new port
when its metrics port was taken meanwhile (what left the demo waiting on a dead embedder)."""

from __future__ import annotations

import socket

import pytest

from app.launcher import EmbeddedStack
from app.supervisor import Pipeline

pytestmark = pytest.mark.integration


def test_an_exited_service_is_revived_on_a_new_port_when_its_own_is_taken(stack: EmbeddedStack) -> None:
    pipeline = Pipeline(stack, service_env={"LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000"})
    try:
        first = pipeline.start_service("dedupe")
        pipeline.wait_ready(120)
        first.process.kill9()
        said: list[str] = []
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", first.metrics_port))
            squatter.listen()
            revived = pipeline.revive(said.append)
            assert [r.name for r in revived] == ["dedupe"] and said and "dedupe exited" in said[0]
            assert revived[0].metrics_port != first.metrics_port
            pipeline.wait_ready(120, revived)
        assert pipeline.revive(said.append) == []  # nothing else to revive
    finally:
        pipeline.stop()
