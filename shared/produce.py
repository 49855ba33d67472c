"""The produce phase of the runtime: a batch's outputs sent with their trace headers, then counted.

Each output carries its input's headers (a null value is not copied), this stage's
timestamp ``lw-ts-<stage>`` and its ``result_id``. :func:`send_outputs` returns only when
every output is acknowledged; any send or flush failure is transient
(:class:`~shared.errors.DependencyUnavailable`): the runtime commits nothing and produces
the batch again (consumers are idempotent on ``result_id``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from kafka.errors import KafkaError

from shared import metrics
from shared.contracts import Topics
from shared.dead_letters import header_value
from shared.errors import DependencyUnavailable
from shared.stage import Output


def _headers_by_result(inputs: Sequence[Any]) -> dict[str, list[tuple[str, bytes]]]:
    """Each input record's headers by its result id (header, else key)."""
    by_result: dict[str, list[tuple[str, bytes]]] = {}
    for record in inputs:
        rid = header_value(record, "result_id") or (record.key or b"").decode(errors="replace")
        by_result[rid] = list(record.headers or [])
    return by_result


def send_outputs(
    producer: Any,
    stage: str,
    outputs: Sequence[Output],
    inputs: Sequence[Any],
    encode: Callable[[Output], bytes],
) -> None:
    """Send ``outputs`` (the records of ``inputs`` lend them their headers) and wait for every ack."""
    input_headers = _headers_by_result(inputs)
    stamp_header = "lw-ts-" + stage
    stamp = datetime.now(UTC).isoformat().encode()
    futures = []
    try:
        for out in outputs:
            inherited = [
                (k, v)
                for k, v in input_headers.get(out.key, [])
                if v is not None and not k.startswith(stamp_header)  # a null header is not copied
            ]
            headers = [*inherited, (stamp_header, stamp)]
            if not any(k == "result_id" for k, _ in headers):
                headers.append(("result_id", out.key.encode()))
            futures.append(producer.send(out.topic, key=out.key.encode(), value=encode(out), headers=headers))
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)
    except KafkaError as exc:
        raise DependencyUnavailable(f"produce failed: {exc}") from exc


def count_produced(stage: str, outputs: Sequence[Output], inputs_done: int) -> None:
    """Metrics of an acknowledged batch: DLQ records by reason, end-to-end latency, messages."""
    now = datetime.now(UTC)
    dlq_count = 0
    for out in outputs:
        if out.topic == Topics.DLQ:
            dlq_count += 1
            reason = getattr(out.value, "reason", "unknown")
            metrics.DLQ.labels(stage, reason).inc()
            continue
        if out.topic == Topics.VERDICTS:  # a second record of an input already counted by its output
            continue
        produced_at = getattr(out.value, "produced_at", None)
        if isinstance(produced_at, datetime):
            metrics.END_TO_END_LATENCY.labels(stage).observe(max(0.0, (now - produced_at).total_seconds()))
    metrics.MESSAGES.labels(stage, "dlq").inc(dlq_count)
    metrics.MESSAGES.labels(stage, "ok").inc(inputs_done)
