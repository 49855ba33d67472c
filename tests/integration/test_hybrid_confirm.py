"""The novelty service with hybrid confirmation on the real broker: a re-simulation becomes a
duplicate of its library entry, a distinct layout next to it is scored."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from app.launcher import EmbeddedStack
from app.supervisor import Pipeline
from services.explain.cli import register
from shared.contracts import (
    DuplicateRecord,
    EmbeddedResult,
    Hashes,
    LibraryEntry,
    ScoreRecord,
    Topics,
    Transform,
    Vector,
)
from shared.errors import ConfigError
from shared.imageref import make_image_ref
from shared.imaging import decode_image
from shared.index.thresholds import ThresholdsFile, save_thresholds
from shared.testing import collect, produce
from toolkit.litho import ClipSample, FarmGenerator, Variant

pytestmark = pytest.mark.integration
DIM = 8


def unit(values: np.ndarray) -> Vector:
    return Vector.from_array((values / np.linalg.norm(values)).astype(np.float32))


def embedded(result_id: str, sample: ClipSample, vector: np.ndarray) -> EmbeddedResult:
    mask, printed = make_image_ref(sample.mask), make_image_ref(sample.simulated)
    return EmbeddedResult(
        result_id=result_id, nm_per_px=sample.nm_per_px, mask=mask, simulated=printed,
        labels={"family": str(sample.labels["family"])}, produced_at=datetime.now(UTC),
        hashes=Hashes(exact="0" * 64), aligned_simulated=printed, transform=Transform.identity(),
        embedding=unit(vector), model_version="test-model",
    )


def test_resimulation_is_confirmed_and_a_distinct_layout_is_scored(
    stack: EmbeddedStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    farm = FarmGenerator(seed=5, families=("shapes",))
    layout, other = farm.new_layout(), farm.new_layout()
    nominal = farm.render(layout, "g")
    resim = farm.render(layout, "g", Variant(shift_px=(-26, 34), dose=0.97, defocus_nm=-40.0))
    distinct = farm.render(other, "h", Variant(shift_px=(-26, 34)))
    base = np.zeros(DIM, np.float32)
    base[0] = 1.0
    rng = np.random.default_rng(0)
    produce(stack.bootstrap, Topics.LIBRARY, [
        LibraryEntry(entry_id="lib-shapes", vector=unit(base), model_version="test-model",
                     labels={"family": "shapes"}, mask=make_image_ref(nominal.mask),
                     simulated=make_image_ref(nominal.simulated)),
    ])
    # both queries sit right next to the entry in embedding space: only pixels tell them apart
    produce(stack.bootstrap, Topics.EMBEDDED, [
        embedded("q-resim", resim, base + 0.05 * rng.standard_normal(DIM).astype(np.float32)),
        embedded("q-distinct", distinct, base + 0.05 * rng.standard_normal(DIM).astype(np.float32)),
    ])
    thresholds = tmp_path / "thresholds.json"
    save_thresholds(thresholds, ThresholdsFile(model_version="test-model", global_threshold=0.2,
                                               method="fixed", embedding_dim=DIM))
    pipeline = Pipeline(stack, service_env={
        "LITHOWATCH_THRESHOLDS_PATH": str(thresholds),
        "LITHOWATCH_HYBRID_CONFIRM": "true",
        "LITHOWATCH_NEAR_IDENTITY_SIMILARITY": "0.95",
        "LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000",
        "LITHOWATCH_SESSION_TIMEOUT_MS": "6000",
    })
    pipeline.start_service("novelty")
    try:
        pipeline.wait_ready(120)
        records = collect(stack.bootstrap, [Topics.SCORES, Topics.DUPLICATES],
                          lambda rs: len({r.key for r in rs}) >= 2, timeout_seconds=120)
    finally:
        pipeline.stop()
    duplicates = [
        DuplicateRecord.model_validate_json(r.value) for r in records if r.topic == Topics.DUPLICATES
    ]
    scores = [ScoreRecord.model_validate_json(r.value) for r in records if r.topic == Topics.SCORES]
    assert [d.result_id for d in duplicates] == ["q-resim"]
    record = duplicates[0]
    assert record.duplicate_of == "lib-shapes" and record.method.startswith("embedding+")
    assert record.stage == "novelty" and record.details["shift_px"] == [-26, 34]
    assert record.details["similarity"] >= 0.95
    assert [s.result_id for s in scores] == ["q-distinct"]
    assert scores[0].neighbours[0].id == "lib-shapes" and scores[0].neighbours[0].similarity >= 0.95

    # the offline command renders the confirmed duplicate's panel from the topics
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    monkeypatch.setenv("LITHOWATCH_BLOB_ROOT", str(tmp_path / "blobs"))
    out = tmp_path / "panel.png"
    args = parser.parse_args(["explain", "q-resim", "--out", str(out), "--timeout", "30"])
    assert args.func(args) == 0
    assert "duplicate of lib-shapes" in capsys.readouterr().out
    panel = decode_image(out.read_bytes())
    assert panel.shape[1] > 4 * 192
    with pytest.raises(ConfigError):
        args = parser.parse_args(["explain", "q-distinct", "--out", str(out), "--timeout", "30"])
        args.func(args)
