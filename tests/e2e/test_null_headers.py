"""Null header values, as librdkafka and Java clients send them, at every stage.

kafka-python writes a ``None`` header as an empty value, so these records are produced
with confluent-kafka (librdkafka), which writes a true null. Each stage gets an invalid
record with a null header (it must be dead-lettered, which copies the headers) and a good
result with a null header goes through the whole pipeline (outputs must not carry it on).
"""

from __future__ import annotations

import json

import pytest

from app.supervisor import Pipeline, http_status
from shared.contracts import DLQRecord, Topics
from shared.testing import collect, make_result

pytestmark = pytest.mark.e2e

STAGE_INPUTS = {
    "dedupe": Topics.RESULTS,
    "align": Topics.UNIQUE,
    "embed": Topics.ALIGNED,
    "novelty": Topics.EMBEDDED,
    "explain": Topics.ALERTS,
}


def _produce_with_null_headers(bootstrap: str, records: list[tuple[str, str, bytes]]) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for topic, key, value in records:
        producer.produce(
            topic, key=key.encode(), value=value, headers=[("trace-null", None), ("origin", b"t")]
        )
    assert producer.flush(30) == 0


def test_null_header_values_are_dead_lettered_or_passed_over_at_every_stage(pipeline: Pipeline) -> None:
    stack = pipeline.stack
    bad = [(topic, f"null-{stage}", b'{"not": "a contract"') for stage, topic in STAGE_INPUTS.items()]
    good = make_result("good-with-null-header")
    _produce_with_null_headers(
        stack.bootstrap, [*bad, (Topics.RESULTS, good.result_id, good.model_dump_json().encode())]
    )

    def done(records: list) -> bool:
        dlq = [r for r in records if r.topic == Topics.DLQ]
        return len(dlq) >= len(bad) and any(r.topic == Topics.SCORES for r in records)

    records = collect(stack.bootstrap, [Topics.DLQ, Topics.UNIQUE, Topics.EMBEDDED, Topics.SCORES], done, 180)
    dlq = [DLQRecord.model_validate_json(r.value) for r in records if r.topic == Topics.DLQ]
    assert sorted((d.stage, d.result_id, d.reason) for d in dlq) == sorted(
        (stage, f"null-{stage}", "invalid_json") for stage in STAGE_INPUTS
    )
    assert all(d.headers.get("trace-null") == "" and d.headers.get("origin") == "t" for d in dlq)
    downstream = [r for r in records if r.topic != Topics.DLQ and not r.key.startswith(b"null-")]
    assert {json.loads(r.value)["result_id"] for r in downstream} == {good.result_id}
    for record in downstream:  # the null header is not copied on; the others are
        names = [k for k, _ in record.headers]
        assert "trace-null" not in names and "origin" in names
    alive = {s.name: s.process.alive() and http_status(s.health_url) == 200 for s in pipeline.services}
    assert all(alive.values()), alive
