"""Null header values, as librdkafka and Java clients send them, at every stage.

kafka-python writes a ``None`` header as an empty value, so these records are produced
with confluent-kafka (librdkafka), which writes a true null. Each stage gets an invalid
record with a null header (it must be dead-lettered, which copies the headers) and a good
result with a null header goes through the whole pipeline (outputs must not carry it on).
The verdicts of those results are read back with confluent-kafka too: a librdkafka consumer
reads the project's topics from the embedded broker.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from app.supervisor import Pipeline, http_status
from shared.contracts import DLQRecord, ScoreRecord, Topics, VerdictRecord
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


def _read_with_confluent(bootstrap: str, topic: str, wanted: set[str], timeout_seconds: float) -> list[Any]:
    """Messages of ``topic`` from the beginning, read by a librdkafka consumer (assigned, no commits)
    until every key in ``wanted`` was seen or the time is up."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": "test-librdkafka-reader", "enable.auto.commit": False,
    })
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([
            confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in partitions
        ])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline and not wanted <= {m.key().decode() for m in messages}:
            message = consumer.poll(0.5)
            if message is not None:
                assert message.error() is None, message.error()
                messages.append(message)
        return messages
    finally:
        consumer.close()


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
    # each result's verdict, read with librdkafka: dead-lettered where its stage refused it (an
    # alert refused by explain is a result already scored: no verdict), scored for the good one
    on_path = {f"null-{stage}" for stage, topic in STAGE_INPUTS.items() if topic != Topics.ALERTS}
    read = _read_with_confluent(stack.bootstrap, Topics.VERDICTS, {*on_path, good.result_id}, 120)
    verdicts = {m.key().decode(): VerdictRecord.from_wire(m.value()) for m in read}
    assert {k: (v.outcome, v.reason) for k, v in verdicts.items() if k in on_path} == {
        key: ("dead_lettered", "invalid_json") for key in on_path
    }
    assert "null-explain" not in verdicts
    assert (verdicts[good.result_id].outcome, verdicts[good.result_id].job_id) == ("scored", good.job_id)
    # the score itself, read with librdkafka too
    read = _read_with_confluent(stack.bootstrap, Topics.SCORES, {good.result_id}, 60)
    scores = [ScoreRecord.from_wire(m.value()) for m in read if m.key() == good.result_id.encode()]
    assert scores and (scores[-1].result_id, scores[-1].job_id) == (good.result_id, good.job_id)
    alive = {s.name: s.process.alive() and http_status(s.health_url) == 200 for s in pipeline.services}
    assert all(alive.values()), alive
