"""Contract evolution: writers strict, readers tolerant of newer minor versions, a newer major refused."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from shared.contracts import (
    SCHEMA_MINOR,
    SCHEMA_VERSION,
    TOPIC_MODELS,
    AlertRecord,
    DLQRecord,
    EmbeddedResult,
    Record,
    ScoreRecord,
    SimResult,
    Topics,
    json_schemas,
)
from shared.dead_letters import decode
from shared.testing import embedded_result, make_result

LIMIT_BYTES = 1 << 20


@dataclass
class WireRecord:
    """A consumed record as the runtime sees it."""

    value: bytes | None
    topic: str = Topics.RESULTS
    partition: int = 0
    offset: int = 0
    key: bytes | None = b"r-1"
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def newer_minor(record: Record, **added: Any) -> bytes:
    """``record`` as a writer of a newer minor version would send it: extra fields, a higher minor."""
    doc = json.loads(record.model_dump_json())
    doc.update(schema_minor=SCHEMA_MINOR + 3, **added)
    return json.dumps(doc).encode()


def without(doc_bytes: bytes, *names: str) -> bytes:
    doc = json.loads(doc_bytes)
    for name in names:
        doc.pop(name, None)
    return json.dumps(doc).encode()


def test_every_topic_record_states_its_major_and_minor_version() -> None:
    assert (SCHEMA_VERSION, SCHEMA_MINOR) == (1, 1)
    for topic, model in TOPIC_MODELS.items():
        assert issubclass(model, Record), topic
        assert topic.endswith(f".v{SCHEMA_VERSION}")
    for topic, schema in json_schemas().items():
        properties = schema["properties"]
        assert properties["schema_version"]["const"] == SCHEMA_VERSION, topic
        assert properties["schema_minor"]["default"] == SCHEMA_MINOR, topic


def test_a_v1_reader_reads_a_record_of_a_newer_minor_with_added_fields() -> None:
    result = make_result("r-1", labels={"family": "grating"})
    doc = json.loads(newer_minor(result, added_by_a_newer_writer={"any": "thing"}))
    doc["mask"]["colour_profile"] = "srgb"  # nested records are read tolerantly too
    read = SimResult.from_wire(json.dumps(doc))
    assert read.schema_minor == SCHEMA_MINOR + 3
    assert read.model_dump(exclude={"schema_minor"}) == result.model_dump(exclude={"schema_minor"})
    # written again, it is a record of this code's minor: the fields it did not know are gone
    again = json.loads(read.model_dump_json())
    assert again["schema_minor"] == SCHEMA_MINOR
    assert "added_by_a_newer_writer" not in again and "colour_profile" not in again["mask"]


def test_the_runtime_decodes_a_newer_minor_and_a_record_written_before_minors() -> None:
    item = embedded_result("r-2", np.ones(8, np.float32))
    decoded = decode(WireRecord(newer_minor(item, drift_score=0.4)), EmbeddedResult, LIMIT_BYTES)
    assert isinstance(decoded, EmbeddedResult) and decoded.result_id == "r-2"
    older = without(item.model_dump_json().encode(), "schema_minor", "job_id")  # a minor-0 writer's record
    read = decode(WireRecord(older), EmbeddedResult, LIMIT_BYTES)
    assert isinstance(read, EmbeddedResult) and read.schema_minor == 0 and read.job_id == ""


def test_scores_and_alerts_of_the_earlier_minor_still_read() -> None:
    """Minor 1 added the farm's ids and the alignment flag: a minor-0 record lacks them."""
    score = ScoreRecord(
        result_id="r-3", novelty_score=0.1, threshold=0.2, decision="known", model_version="m",
        produced_at=make_result("r-3").produced_at,
    )
    old = without(score.model_dump_json().encode(), "schema_minor", "job_id", "clip_id",
                  "alignment_flagged", "alignment_reason")
    read = ScoreRecord.from_wire(old)
    assert (read.job_id, read.clip_id, read.alignment_flagged, read.schema_minor) == ("", "", False, 0)
    assert "job_id" in AlertRecord.model_fields and "alignment_reason" in AlertRecord.model_fields


def test_a_newer_major_is_refused_with_a_clear_reason() -> None:
    result = make_result("r-4")
    newer = json.dumps({**json.loads(result.model_dump_json()), "schema_version": 2, "new_required": 1})
    with pytest.raises(ValidationError) as caught:
        SimResult.from_wire(newer)
    assert {e["type"] for e in caught.value.errors()} == {"schema_version_unsupported"}
    assert "new topic version" in str(caught.value)
    refused = decode(WireRecord(newer.encode()), SimResult, LIMIT_BYTES)
    assert isinstance(refused, tuple)
    reason, error = refused
    assert reason == "schema_version_unsupported" and "schema_version 2" in error


def test_writers_stay_strict() -> None:
    result = make_result("r-5")
    doc = result.model_dump()
    with pytest.raises(ValidationError) as in_code:
        SimResult(**doc, surprise=1)  # type: ignore[call-arg]  # the point: a field the model lacks
    assert {e["type"] for e in in_code.value.errors()} == {"extra_forbidden"}
    with pytest.raises(ValidationError):
        SimResult.model_validate({**doc, "surprise": 1})
    with pytest.raises(ValidationError):
        SimResult.model_validate_json(newer_minor(result, surprise=1))  # the strict reader refuses too
    with pytest.raises(ValidationError):
        DLQRecord(stage="s", reason="r", error="e", topic="t", partition=0, offset=0, schema_version=2)
    # JSON Schemas describe what this version writes: no property beyond the model's
    assert all(schema.get("additionalProperties") is False for schema in json_schemas().values())
