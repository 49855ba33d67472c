"""Contracts: round-trips, schema drift, image and vector checks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from app.ops_cli import schema_files
from shared.contracts import (
    TOPIC_MODELS,
    AlertRecord,
    DLQRecord,
    DuplicateRecord,
    Hashes,
    ImageRef,
    LibraryEntry,
    Neighbour,
    ScoreRecord,
    SimResult,
    Topics,
    Vector,
)
from shared.errors import ContractError
from shared.imageref import ImageLoader, make_image_ref
from shared.testing import make_result

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_every_topic_is_versioned_and_has_a_model() -> None:
    assert set(Topics.all()) == set(TOPIC_MODELS)
    assert all(t.startswith("lithowatch.") and t.endswith(".v1") for t in Topics.all())


def test_result_round_trips_through_json() -> None:
    result = make_result("abc-1", np.random.default_rng(0), labels={"family": "grating", "severity": 1.5})
    again = SimResult.model_validate_json(result.model_dump_json())
    assert again == result
    load = ImageLoader()
    assert load(again.mask).shape == (64, 64)


def test_all_records_round_trip() -> None:
    now = datetime.now(UTC)
    image = make_image_ref(np.zeros((8, 8), np.float32))
    vector = Vector.from_array(np.arange(4, dtype=np.float32))
    records = [
        DuplicateRecord(
            result_id="a", duplicate_of="b", method="exact", distance=0, stage="dedupe", produced_at=now
        ),
        ScoreRecord(
            result_id="a",
            novelty_score=0.3,
            threshold=0.2,
            decision="novel",
            model_version="m",
            neighbours=[Neighbour(id="x", similarity=0.7)],
            produced_at=now,
        ),
        AlertRecord(
            alert_id="al",
            result_id="a",
            novelty_score=0.3,
            threshold=0.2,
            neighbours=[],
            mask=image,
            simulated=image,
            model_version="m",
            produced_at=now,
        ),
        LibraryEntry(entry_id="e", vector=vector, model_version="m", hashes=Hashes(exact="0" * 64)),
        DLQRecord(stage="s", reason="r", error="e", topic="t", partition=0, offset=1),
    ]
    for record in records:
        assert type(record).model_validate_json(record.model_dump_json()) == record


def test_vector_round_trip_and_dimension_check() -> None:
    array = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    vector = Vector.from_array(array)
    assert np.array_equal(vector.to_array(), array)
    with pytest.raises(ContractError):
        Vector(dim=17, b64=vector.b64).to_array()


def test_unknown_fields_and_missing_location_are_refused() -> None:
    result = make_result("abc-2").model_dump(mode="json")
    with pytest.raises(ValidationError):
        SimResult.model_validate({**result, "surprise": 1})
    with pytest.raises(ValidationError):
        ImageRef(format="png", sha256="0" * 64, shape=(4, 4), dtype="uint8")
    with pytest.raises(ValidationError):
        SimResult.model_validate({**result, "result_id": "../../etc"})


def test_library_upsert_needs_a_vector() -> None:
    with pytest.raises(ValidationError):
        LibraryEntry(entry_id="e", model_version="m")
    assert LibraryEntry(entry_id="e", model_version="m", op="delete").vector is None


def test_schemas_match_the_models() -> None:
    expected = schema_files()
    on_disk = {p.name: p.read_text() for p in SCHEMAS.glob("*.schema.json")}
    assert set(on_disk) == set(expected), (
        "schemas/ lists other topics than the models: run `lithowatch schemas`"
    )
    drifted = [name for name in expected if on_disk[name] != expected[name]]
    assert not drifted, f"schemas drifted from the models: {drifted}; run `lithowatch schemas`"


def test_every_schema_names_its_dialect_and_identity_and_validates_real_messages() -> None:
    import json

    import jsonschema

    ids = set()
    for path in sorted(SCHEMAS.glob("*.schema.json")):
        schema = json.loads(path.read_text())
        topic = path.name.removesuffix(".schema.json")
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", path.name
        assert schema["$id"] == f"urn:lithowatch:schema:{topic}", path.name
        jsonschema.Draft202012Validator.check_schema(schema)
        ids.add(schema["$id"])
    assert len(ids) == len(list(SCHEMAS.glob("*.schema.json")))
    dlq = json.loads((SCHEMAS / "lithowatch.dlq.v1.schema.json").read_text())
    record = DLQRecord(stage="dedupe", reason="invalid_json", error="x", topic="t", partition=0, offset=1)
    jsonschema.Draft202012Validator(dlq).validate(json.loads(record.model_dump_json()))
