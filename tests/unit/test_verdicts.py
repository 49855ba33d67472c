"""Verdicts: built from each stage's outcome and from dead letters, produced before the commit."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from kafka import TopicPartition
from pydantic import ValidationError
from test_contracts_evolution import WireRecord
from test_novelty_core import near, result, with_library
from test_runtime_policy import FakeConsumer, FakeProducer, Item, _run

from app.ops_cli import format_verdict, tail_line
from services.dedupe import NAME as DEDUPE
from services.dedupe.core import DedupeCore
from services.dedupe.stage import DedupeStage
from services.dedupe.store_memory import InMemoryDedupeStore
from services.novelty import NAME as NOVELTY
from services.novelty.stage import NoveltyStage
from shared.contracts import (
    AlertRecord,
    DLQRecord,
    DuplicateRecord,
    ScoreRecord,
    SimResult,
    Topics,
    VerdictRecord,
)
from shared.dead_letters import DeadLetters
from shared.errors import InputError
from shared.stage import ItemResult, Output, StageBase
from shared.testing import make_result
from shared.verdicts import (
    VERDICT_LABELS_MAX_BYTES,
    dead_letter_verdict,
    duplicate_verdict,
    scored_verdict,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def farm_result(result_id: str, seed: int, **fields: Any) -> SimResult:
    base = make_result(result_id, np.random.default_rng(seed), labels={"family": "grating"})
    return base.model_copy(update={"job_id": "job-7", "clip_id": f"clip-{result_id}", **fields})


def verdicts(outputs: ItemResult) -> list[VerdictRecord]:
    assert not isinstance(outputs, InputError), outputs
    found = [out.value for out in outputs if out.topic == Topics.VERDICTS]
    assert all(isinstance(v, VerdictRecord) for v in found)
    assert all(out.key == out.value.result_id for out in outputs if out.topic == Topics.VERDICTS)  # type: ignore[attr-defined]
    return found  # type: ignore[return-value]


# -- the record ------------------------------------------------------------------------------------


def test_each_outcome_needs_its_own_fields() -> None:
    with pytest.raises(ValidationError, match="scored verdict needs decision"):
        VerdictRecord(result_id="r", outcome="scored", stage=NOVELTY, novelty_score=0.1)
    with pytest.raises(ValidationError, match="duplicate verdict needs duplicate_of, method"):
        VerdictRecord(result_id="r", outcome="duplicate", stage=DEDUPE)
    with pytest.raises(ValidationError, match="dead_lettered verdict needs reason"):
        VerdictRecord(result_id="r", outcome="dead_lettered", stage=DEDUPE)
    ok = VerdictRecord(result_id="r", outcome="dead_lettered", stage=DEDUPE, reason="image_corrupt")
    assert VerdictRecord.from_wire(ok.model_dump_json()) == ok
    assert ok.alignment_flagged is None  # not known before the align stage


# -- builders --------------------------------------------------------------------------------------


def test_a_scored_verdict_carries_the_score_and_the_farms_ids() -> None:
    score = ScoreRecord(
        result_id="r-1", novelty_score=0.4, threshold=0.2, decision="novel", model_version="m",
        labels={"family": "via"}, job_id="job-1", clip_id="clip-1", alignment_flagged=True,
        alignment_reason="low_quality", produced_at=NOW,
    )
    verdict = scored_verdict(score, NOVELTY, alert_id="alert-r-1")
    assert verdict.model_dump(include={
        "outcome", "stage", "decision", "novelty_score", "threshold", "model_version", "alert_id",
        "job_id", "clip_id", "labels", "alignment_flagged", "alignment_reason", "produced_at",
    }) == {
        "outcome": "scored", "stage": NOVELTY, "decision": "novel", "novelty_score": 0.4, "threshold": 0.2,
        "model_version": "m", "alert_id": "alert-r-1", "job_id": "job-1", "clip_id": "clip-1",
        "labels": {"family": "via"}, "alignment_flagged": True, "alignment_reason": "low_quality",
        "produced_at": NOW,
    }


def test_a_duplicate_verdict_says_of_what_and_how() -> None:
    item = farm_result("r-2", 1)
    duplicate = DuplicateRecord(result_id="r-2", duplicate_of="r-0", method="perceptual", distance=0.02,
                                stage=DEDUPE, produced_at=item.produced_at)
    verdict = duplicate_verdict(duplicate, item)
    assert (verdict.outcome, verdict.duplicate_of, verdict.method, verdict.stage) == (
        "duplicate", "r-0", "perceptual", DEDUPE)
    assert (verdict.job_id, verdict.clip_id, verdict.labels) == ("job-7", "clip-r-2", {"family": "grating"})
    assert verdict.alignment_flagged is None


# -- dead letters ----------------------------------------------------------------------------------


def dead_letter(topic: str = Topics.UNIQUE, reason: str = "image_corrupt", result_id: str | None = "r-3",
                ) -> DLQRecord:
    return DLQRecord(stage="align", reason=reason, error="x" * 3000, topic=topic, partition=0, offset=9,
                     result_id=result_id)


def test_a_dead_letter_verdict_takes_what_the_message_says_where_it_can() -> None:
    message = farm_result("r-3", 2).model_dump_json().encode()
    verdict = dead_letter_verdict(dead_letter(), message)
    assert verdict is not None
    assert (verdict.outcome, verdict.stage, verdict.reason) == ("dead_lettered", "align", "image_corrupt")
    assert (verdict.job_id, verdict.clip_id, verdict.labels) == ("job-7", "clip-r-3", {"family": "grating"})
    assert verdict.produced_at is not None and len(verdict.error) == 500
    unreadable = dead_letter_verdict(dead_letter(reason="invalid_json"), b'{"job_id": "j", ')
    assert unreadable is not None and (unreadable.result_id, unreadable.job_id) == ("r-3", "")
    huge = json.dumps({"job_id": "j", "labels": {"pad": "x" * VERDICT_LABELS_MAX_BYTES}}).encode()
    bulky = dead_letter_verdict(dead_letter(), huge)
    assert bulky is not None and bulky.labels == {} and bulky.job_id == "j"
    assert dead_letter_verdict(dead_letter(), None) is not None  # too large to read: the id is enough


@pytest.mark.parametrize(
    ("letter", "why"),
    [
        (dead_letter(topic=Topics.ALERTS), "an alert: its result is already scored"),
        (dead_letter(reason="result_id_reused"), "the id belongs to an earlier result"),
        (dead_letter(result_id=None), "no id"),
        (dead_letter(result_id="not a valid id!"), "no consumer could look it up"),
    ],
)
def test_dead_letters_that_get_no_verdict(letter: DLQRecord, why: str) -> None:
    assert dead_letter_verdict(letter, b"{}") is None, why


def test_the_dead_letters_of_a_result_come_with_its_verdict(tmp_path: Any) -> None:
    letters = DeadLetters("align", 1 << 20, tmp_path)
    item = farm_result("r-4", 3)
    record = WireRecord(item.model_dump_json().encode(), topic=Topics.UNIQUE, key=b"r-4",
                        headers=[("result_id", b"r-4")])
    dlq, verdict = letters.outputs(record, "image_corrupt", "bad pixels")
    assert (dlq.topic, verdict.topic, verdict.key) == (Topics.DLQ, Topics.VERDICTS, "r-4")
    assert isinstance(verdict.value, VerdictRecord) and verdict.value.clip_id == "clip-r-4"
    alert = WireRecord(b"{}", topic=Topics.ALERTS, key=b"r-4")
    assert [out.topic for out in letters.outputs(alert, "invalid_json", "x")] == [Topics.DLQ]
    # under a small message limit, labels that would not fit are left out of the verdict
    small = DeadLetters("align", 64 * 1024, tmp_path)
    padded = item.model_copy(update={"labels": {"pad": "x" * 9000}})
    record = WireRecord(padded.model_dump_json().encode(), topic=Topics.UNIQUE, key=b"r-4")
    _, verdict = small.outputs(record, "image_corrupt", "bad pixels")
    assert isinstance(verdict.value, VerdictRecord) and verdict.value.labels == {}
    assert len(verdict.value.model_dump_json()) < 64 * 1024 // 4


class RejectingResults(StageBase):
    """A stage on the results topic that rejects odd items."""

    name = "rejecting"
    input_topic = Topics.RESULTS
    input_model = Item

    def process_batch(self, items: Any) -> list[ItemResult]:
        odd = InputError("odd", reason="test_reject")
        return [odd if item.n % 2 else [Output("policy.out", item, item.result_id)] for item in items]


class ResultsConsumer(FakeConsumer):
    """The fake consumer, reading the results topic; at each commit it notes what was acknowledged."""

    def __init__(self, values: list[bytes | None], producer: FakeProducer) -> None:
        super().__init__(values)
        for record in self.records:
            record.topic = Topics.RESULTS
        self.producer = producer
        self.acked_at_commit: list[list[tuple[str, bytes]]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(Topics.RESULTS, 0)}

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.acked_at_commit.append([(topic, key) for topic, key, _ in self.producer.acked])
        super().commit(offsets)


def test_the_runtime_produces_dead_lettered_verdicts_before_it_commits() -> None:
    producer = FakeProducer()
    consumer = ResultsConsumer(
        [Item(result_id=f"r{n}", n=n).model_dump_json().encode() for n in range(4)], producer
    )
    _run(RejectingResults(), consumer, producer)
    (acked,) = consumer.acked_at_commit  # one batch, committed once, after its outputs were acknowledged
    assert sorted(k for t, k in acked if t == Topics.VERDICTS) == [b"r1", b"r3"]
    assert sorted(k for t, k in acked if t == Topics.DLQ) == [b"r1", b"r3"]
    assert consumer.commits == [{TopicPartition(Topics.RESULTS, 0): 4}]
    dead = [VerdictRecord.model_validate_json(v) for t, _, v in producer.acked if t == Topics.VERDICTS]
    assert {(v.outcome, v.stage, v.reason) for v in dead} == {("dead_lettered", "rejecting", "test_reject")}


# -- stages ----------------------------------------------------------------------------------------


def test_dedupe_gives_a_duplicate_its_verdict_and_a_unique_result_none_yet() -> None:
    first = farm_result("first", 5)
    again = farm_result("again", 5)  # the same pixels under another id: an exact duplicate
    stage = DedupeStage(DedupeCore(InMemoryDedupeStore()))
    unique, duplicate = stage.process_batch([first, again])
    assert verdicts(unique) == []
    (verdict,) = verdicts(duplicate)
    assert (verdict.result_id, verdict.duplicate_of, verdict.method, verdict.stage) == (
        "again", "first", "exact", DEDUPE)
    assert (verdict.job_id, verdict.clip_id) == ("job-7", "clip-again")


def test_novelty_gives_every_scored_or_duplicate_result_its_verdict_with_the_farms_ids() -> None:
    rng = np.random.default_rng(4)
    flagged = result("flagged", near(0, rng)).model_copy(update={
        "job_id": "job-9", "clip_id": "clip-flagged", "alignment_flagged": True, "alignment_reason": "no_fit",
    })
    novel = result("novel", near(20, rng)).model_copy(update={"job_id": "job-9", "clip_id": "clip-novel"})
    known_out, novel_out = NoveltyStage(with_library(threshold=0.2).core).process_batch([flagged, novel])
    (known,) = verdicts(known_out)
    assert (known.outcome, known.decision, known.job_id) == ("scored", "known", "job-9")
    assert known.clip_id == "clip-flagged"
    assert (known.alignment_flagged, known.alignment_reason) == (True, "no_fit")
    assert not isinstance(known_out, InputError) and not isinstance(novel_out, InputError)
    score = next(out.value for out in known_out if out.topic == Topics.SCORES)
    assert isinstance(score, ScoreRecord) and (score.job_id, score.alignment_flagged) == ("job-9", True)
    (alerting,) = verdicts(novel_out)
    alert = next(out.value for out in novel_out if out.topic == Topics.ALERTS)
    assert isinstance(alert, AlertRecord) and (alert.job_id, alert.clip_id) == ("job-9", "clip-novel")
    assert alerting.decision == "novel" and alerting.alert_id == alert.alert_id
    assert [out.topic for out in novel_out][-1] == Topics.VERDICTS


# -- reading them ----------------------------------------------------------------------------------


def test_tail_shows_a_verdict_as_one_readable_line() -> None:
    scored = VerdictRecord(result_id="r-5", outcome="scored", stage=NOVELTY, decision="novel",
                           novelty_score=0.31, threshold=0.25, model_version="enc-1", alert_id="alert-r-5",
                           job_id="job-1",
                           clip_id="c-5", alignment_flagged=True, alignment_reason="low\x1b[31mquality",
                           decided_at=NOW)
    line = format_verdict(scored)
    assert line.startswith("SCORED        r-5  novel 0.310 >= 0.250  model enc-1  alert alert-r-5")
    assert "job job-1  clip c-5" in line and "ALIGNMENT FLAGGED" in line and "\x1b" not in line
    duplicate = VerdictRecord(result_id="r-6", outcome="duplicate", stage=DEDUPE, duplicate_of="r-1",
                              method="exact", decided_at=NOW)
    assert format_verdict(duplicate).startswith("DUPLICATE     r-6  of r-1 (exact, dedupe)")
    dead = VerdictRecord(result_id="r-7", outcome="dead_lettered", stage="align", reason="image_corrupt",
                         error="bad", decided_at=NOW)
    assert format_verdict(dead).startswith("DEAD_LETTERED r-7  at align: image_corrupt: bad")
    record = WireRecord(dead.model_dump_json().encode(), topic=Topics.VERDICTS, offset=4, key=b"r-7")
    assert tail_line(record, VerdictRecord, full=False, meta=True).startswith("[0/4] DEAD_LETTERED r-7")
    assert json.loads(tail_line(record, VerdictRecord, full=False, meta=False, as_json=True))["reason"] == (
        "image_corrupt")
