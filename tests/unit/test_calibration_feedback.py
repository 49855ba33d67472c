"""Reviewers' promote/drop decisions as calibration labels (``calibrate --feedback``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.novelty.library_cli import feedback_records, reviewer
from shared.contracts import FeedbackRecord, Vector
from shared.errors import ConfigError
from shared.testing import library_entry
from toolkit.calibration.feedback import feedback_labels, load_feedback, parse_feedback_lines
from toolkit.calibration.recipe import run_calibration

DIM = 16


def decision(
    entry_id: str, kind: str, vector: np.ndarray, model: str = "m1", by: str = "ana"
) -> FeedbackRecord:
    return FeedbackRecord(
        entry_id=entry_id,
        decision=kind,  # type: ignore[arg-type]
        by=by,
        model_version=model,
        vector=Vector.from_array(vector.astype(np.float32)),
    )


def test_decisions_keep_who_why_and_the_entry() -> None:
    entry = library_entry("provisional/r1", np.ones(DIM), "m1", {"job_id": "j"}).model_copy(
        update={"status": "provisional", "alert_id": "alert-r1"}
    )
    (record,) = feedback_records([entry], "dropped", "ana", "noise")
    assert (record.entry_id, record.decision, record.by, record.reason) == (
        "provisional/r1",
        "dropped",
        "ana",
        "noise",
    )
    assert (
        record.vector == entry.vector and record.labels == {"job_id": "j"} and record.alert_id == "alert-r1"
    )
    assert FeedbackRecord.from_wire(record.model_dump_json()) == record


def test_reviewer_is_given_or_the_os_user(monkeypatch: pytest.MonkeyPatch) -> None:
    assert reviewer(" bo ") == "bo"
    monkeypatch.setenv("LOGNAME", "someone")
    monkeypatch.setenv("USER", "someone")
    assert reviewer(None) == "someone"
    assert reviewer("  ") == "someone"


def test_promoted_are_known_dropped_are_novel_latest_decision_wins() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, DIM))
    records = [
        decision("a", "promoted", vectors[0]),
        decision("b", "dropped", vectors[1]),
        decision("c", "dropped", vectors[2]),
        decision("c", "promoted", vectors[2], by="bo"),  # reconsidered: the later decision counts
        decision("d", "dropped", vectors[3], model="m0"),  # another model's space: left out
        FeedbackRecord(entry_id="e", decision="dropped", by="ana", model_version="m1"),  # no vector
    ]
    labels = feedback_labels(records, "m1", DIM)
    assert labels.known.shape == (2, DIM) and labels.novel.shape == (1, DIM)
    assert np.allclose(labels.novel[0], vectors[1].astype(np.float32))
    assert labels.skipped == {"other_model": 1, "no_vector": 1}
    assert labels.reviewers == ("ana", "bo")
    with pytest.raises(ConfigError, match="8-d"):
        feedback_labels(records, "m1", 8)


def test_each_model_keeps_its_own_latest_decision_on_an_entry() -> None:
    """One entry id in the old and the new model's library, curated in each: a later decision
    on the old model's entry does not hide the new model's from the new model's calibration."""
    rng = np.random.default_rng(2)
    old, new = rng.standard_normal(8), rng.standard_normal(DIM)
    records = [
        decision("provisional/r1", "dropped", new, model="m2"),
        decision("provisional/r1", "promoted", old, model="m1"),  # later, on the old library
    ]
    for_new = feedback_labels(records, "m2", DIM)
    assert for_new.known.shape == (0, DIM) and for_new.novel.shape == (1, DIM)
    assert np.allclose(for_new.novel[0], new.astype(np.float32))
    assert for_new.skipped == {"other_model": 1}
    for_old = feedback_labels(records, "m1", 8)
    assert for_old.known.shape == (1, 8) and for_old.novel.shape == (0, 8)


def test_feedback_file_is_json_lines(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "feedback.jsonl"
    records = [
        decision("a", "promoted", rng.standard_normal(DIM)),
        decision("b", "dropped", rng.standard_normal(DIM)),
    ]
    path.write_text("\n".join(r.model_dump_json() for r in records) + "\n\n")
    assert load_feedback(str(path)) == records
    with pytest.raises(ConfigError, match=r"feedback\.jsonl:2"):
        parse_feedback_lines([records[0].model_dump_json(), '{"entry_id": "x"}'], str(path))


def clustered(rng: np.random.Generator, n_groups: int = 40, per_group: int = 5) -> tuple[np.ndarray, list]:
    centres = rng.standard_normal((n_groups, DIM))
    embeddings = np.repeat(centres, per_group, axis=0) + 0.15 * rng.standard_normal(
        (n_groups * per_group, DIM)
    )
    return embeddings, [{"group": f"g{i // per_group}"} for i in range(n_groups * per_group)]


def test_feedback_moves_the_threshold_the_way_reviewers_decided() -> None:
    """Dropped results that score low (close to the library) pull the threshold down so that
    results like them alert; promoted results that score high push it up so they do not."""
    rng = np.random.default_rng(2)
    embeddings, labels = clustered(rng)
    options = {"model_version": "m1", "per_cluster": "off", "seed": 0}
    plain = run_calibration(embeddings, labels, **options)
    base = plain.thresholds.global_threshold
    # results near library layouts: a little further than their known variants, below the threshold
    near = embeddings[::5] + 0.3 * rng.standard_normal((40, DIM))
    near_scores = 1 - np.max(
        (near / np.linalg.norm(near, axis=1, keepdims=True))
        @ (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).T,
        axis=1,
    )
    assert np.median(near_scores) < base
    dropped = [decision(f"d{i}", "dropped", v) for i, v in enumerate(near)]
    stricter = run_calibration(embeddings, labels, feedback=feedback_labels(dropped, "m1", DIM), **options)
    assert stricter.thresholds.global_threshold < base
    assert stricter.summary["feedback"]["novel_from_dropped"] == 40
    # results far from everything, promoted (a reviewer says such results are normal)
    far = rng.standard_normal((40, DIM))
    promoted = [decision(f"p{i}", "promoted", v) for i, v in enumerate(far)]
    lenient = run_calibration(embeddings, labels, feedback=feedback_labels(promoted, "m1", DIM), **options)
    assert lenient.thresholds.global_threshold > base
    assert lenient.summary["feedback"]["known_from_promoted"] == 40
