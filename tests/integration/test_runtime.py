"""The stage runtime on the real broker: nothing lost, bad input to the DLQ, clean stops."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient

from app.launcher import ChildProcess, EmbeddedStack, free_port
from shared.contracts import DLQRecord, SimResult, Topics
from shared.kafka_io import committed_offsets
from shared.testing import collect, make_result, produce

pytestmark = pytest.mark.integration

SERVICE = Path(__file__).with_name("passthrough_service.py")
OUT = "lithowatch.test-passthrough.v1"


def start_passthrough(
    stack: EmbeddedStack, name: str = "passthrough", extra: dict[str, str] | None = None
) -> ChildProcess:
    env = stack.env(
        {
            **(extra or {}),
            "LITHOWATCH_STATE_DIR": str(stack.workdir / "state"),
            "LITHOWATCH_METRICS_PORT": str(free_port()),
            "LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000",
            "LITHOWATCH_SESSION_TIMEOUT_MS": "6000",
            "LITHOWATCH_BATCH_MAX_MESSAGES": "16",
        }
    )
    child = ChildProcess(
        name, [sys.executable, str(SERVICE)], stack.workdir / "logs" / f"{name}.log", env=env
    )
    stack.children.append(child)
    return child.start()


def result_ids(records: list) -> set[str]:
    return {SimResult.model_validate_json(r.value).result_id for r in records if r.topic == OUT}


def test_passthrough_moves_everything_and_dlqs_bad_input(stack: EmbeddedStack) -> None:
    stack.create_topics([OUT])
    rng = np.random.default_rng(1)
    good = [make_result(f"r{i:04d}", rng) for i in range(200)]
    corrupt = good[0].model_copy(update={"result_id": "bad-png"})
    bad_image = corrupt.mask.model_copy(update={"inline_b64": "iVBORw0KGgoAAAANSUhEUgAA"})
    corrupt = corrupt.model_copy(update={"mask": bad_image})
    raw = [("not-json", b"{this is not json"), ("bad-png", corrupt.model_dump_json().encode())]
    produce(stack.bootstrap, Topics.RESULTS, [*good[:100], *raw, *good[100:]])
    child = start_passthrough(stack)
    try:
        records = collect(stack.bootstrap, [OUT, Topics.DLQ], lambda rs: len(rs) >= 202, timeout_seconds=90)
    finally:
        child.stop()
    assert result_ids(records) == {r.result_id for r in good}
    dlq = [DLQRecord.model_validate_json(r.value) for r in records if r.topic == Topics.DLQ]
    reasons = {d.result_id: d.reason for d in dlq}
    assert reasons == {"not-json": "invalid_json", "bad-png": "image_digest"}
    assert all(d.value_b64 for d in dlq)


def test_kill9_mid_stream_then_restart_loses_nothing(stack: EmbeddedStack) -> None:
    stack.create_topics([OUT])
    rng = np.random.default_rng(2)
    inputs = [make_result(f"k{i:05d}", rng) for i in range(1500)]
    produce(stack.bootstrap, Topics.RESULTS, inputs)
    child = start_passthrough(stack)
    # wait until some but not all outputs exist, then kill -9
    partial = collect(stack.bootstrap, [OUT], lambda rs: len(rs) >= 150, timeout_seconds=60)
    assert 0 < len(partial) < len(inputs)
    child.kill9()
    child.stop()
    restarted = start_passthrough(stack, "passthrough-2")
    try:
        records = collect(
            stack.bootstrap,
            [OUT],
            lambda rs: result_ids(rs) >= {r.result_id for r in inputs},
            timeout_seconds=120,
        )
    finally:
        restarted.stop()
    assert result_ids(records) == {r.result_id for r in inputs}


def test_sigterm_commits_and_exits_promptly(stack: EmbeddedStack) -> None:
    stack.create_topics([OUT])
    rng = np.random.default_rng(3)
    inputs = [make_result(f"s{i:04d}", rng) for i in range(300)]
    produce(stack.bootstrap, Topics.RESULTS, inputs)
    child = start_passthrough(stack)
    collect(stack.bootstrap, [OUT], lambda rs: len(rs) >= 300, timeout_seconds=90)
    started = time.monotonic()
    child.signal(signal.SIGTERM)
    assert child.proc is not None
    code = child.proc.wait(timeout=30)
    assert code == 0
    assert time.monotonic() - started < 30
    # everything was committed: a new member of the group finds nothing to redo
    admin = KafkaAdminClient(bootstrap_servers=stack.bootstrap)
    try:
        offsets = committed_offsets(admin, "lithowatch-passthrough")
    finally:
        admin.close()
    assert sum(off for tp, off in offsets.items() if tp.topic == Topics.RESULTS) == 300


def test_a_record_that_kills_the_process_is_set_aside_after_the_attempt_count(stack: EmbeddedStack) -> None:
    """Each crash restarts the service (as a supervisor would); the crash loop ends by itself."""
    stack.create_topics([OUT])
    rng = np.random.default_rng(4)
    inputs = [make_result(f"c{i:03d}", rng) for i in range(40)]
    fatal = make_result("fatal-1", rng)
    produce(stack.bootstrap, Topics.RESULTS, [*inputs[:20], fatal, *inputs[20:]])
    wanted = {r.result_id for r in inputs}

    def settled(child: ChildProcess) -> Callable[[list], bool]:
        return lambda rs: not child.alive() or (
            any(r.topic == Topics.DLQ for r in rs) and result_ids(rs) >= wanted
        )

    deaths = 0
    records: list = []
    for life in range(6):
        child = start_passthrough(stack, f"passthrough-{life}", {"LITHOWATCH_CRASH_ATTEMPTS": "2"})
        try:
            records = collect(stack.bootstrap, [OUT, Topics.DLQ], settled(child), timeout_seconds=60)
        finally:
            died = not child.alive()
            child.stop()
        if not died:
            break
        deaths += 1
    assert 1 <= deaths <= 3  # in its batch, then twice alone
    dlq = [DLQRecord.model_validate_json(r.value) for r in records if r.topic == Topics.DLQ]
    assert [(d.reason, d.result_id) for d in dlq] == [("crashed", "fatal-1")]
    assert result_ids(records) == wanted  # nothing else lost
