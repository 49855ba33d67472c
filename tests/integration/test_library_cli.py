"""`lithowatch library promote|drop|list` read and write the library topic (last record per id wins)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from app.launcher import EmbeddedStack
from services.novelty.library_cli import read_library
from shared.contracts import Topics
from shared.kafka_io import read_to_end
from shared.settings import CommonSettings
from shared.testing import library_entry, produce

pytestmark = pytest.mark.integration


def test_promote_and_drop(stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    entries = [library_entry(f"e{i}", rng.standard_normal(8)) for i in range(3)]
    entries[2] = entries[2].model_copy(update={"status": "provisional", "alert_id": "alert-e2"})
    produce(stack.bootstrap, Topics.LIBRARY, entries)
    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    assert main(["library", "promote", "e2"]) == 0
    assert main(["library", "drop", "e0"]) == 0
    assert main(["library", "drop", "missing"]) == 2
    settings = CommonSettings(kafka_bootstrap=stack.bootstrap)
    latest = read_library(settings)
    assert "e0" not in latest  # dropped
    last_e0 = [r for r in read_to_end(settings, Topics.LIBRARY) if r.key == b"e0"][-1]
    assert last_e0.value is None  # a real tombstone: compaction removes the entry for good
    assert main(["library", "drop", "e0"]) == 2  # gone: nothing left to drop
    assert latest["e2"][0].status == "reference" and latest["e2"][0].alert_id == "alert-e2"
    assert latest["e1"][0].status == "reference"


def test_provisional_entries_are_addressed_by_entry_id_or_result_id(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    novel = [
        library_entry(f"provisional/r{i}", rng.standard_normal(8)).model_copy(
            update={"status": "provisional", "alert_id": f"alert-r{i}"}
        )
        for i in range(3)
    ]
    produce(stack.bootstrap, Topics.LIBRARY, [library_entry("r0", rng.standard_normal(8)), *novel])
    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    assert main(["library", "promote", "r1"]) == 0  # the result id of a provisional entry
    assert main(["library", "drop", "provisional/r2"]) == 0  # its entry id
    assert main(["library", "drop", "r0"]) == 0  # a reference entry's own id comes first
    latest = read_library(CommonSettings(kafka_bootstrap=stack.bootstrap))
    assert latest["provisional/r1"][0].status == "reference"
    assert "provisional/r2" not in latest  # dropped (tombstones)
    assert "r0" not in latest and latest["provisional/r0"][0].op == "upsert"


def test_promote_and_drop_record_who_and_why_and_calibrate_reads_them(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Decisions land on the feedback topic (the dropped entry's vector too, though the entry is
    gone), and ``calibrate --feedback`` of that topic counts them as known / novel labels."""
    from shared.contracts import FeedbackRecord
    from shared.dataset import DatasetWriter

    rng = np.random.default_rng(2)
    dim = 8
    centres = rng.standard_normal((12, dim))
    provisional = [
        library_entry(f"provisional/r{i}", centres[i] + 0.01 * rng.standard_normal(dim), "m-fb").model_copy(
            update={"status": "provisional", "alert_id": f"alert-r{i}", "labels": {"job_id": "j1"}}
        )
        for i in range(3)
    ]
    produce(stack.bootstrap, Topics.LIBRARY, provisional)
    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    monkeypatch.setenv("USER", "os-user")
    monkeypatch.setenv("LOGNAME", "os-user")
    assert main(["library", "promote", "r0", "--by", "ana", "--reason", "new cell, reviewed"]) == 0
    assert main(["library", "drop", "r1", "--reason", "misaligned print"]) == 0  # by: the OS user
    assert main(["library", "drop", "r2", "--by", "ana"]) == 0
    assert main(["library", "promote", "provisional/r2"]) == 2  # dropped: nothing to promote, no record
    settings = CommonSettings(kafka_bootstrap=stack.bootstrap)
    decisions = [FeedbackRecord.from_wire(r.value) for r in read_to_end(settings, Topics.FEEDBACK)]
    by_entry = {d.entry_id: d for d in decisions}
    assert len(decisions) == 3
    assert (by_entry["provisional/r0"].decision, by_entry["provisional/r0"].by) == ("promoted", "ana")
    assert by_entry["provisional/r0"].reason == "new cell, reviewed"
    assert (by_entry["provisional/r1"].decision, by_entry["provisional/r1"].by) == ("dropped", "os-user")
    assert by_entry["provisional/r1"].reason == "misaligned print"
    dropped = by_entry["provisional/r2"]
    assert dropped.vector is not None and dropped.vector == provisional[2].vector  # kept after the tombstone
    assert dropped.labels == {"job_id": "j1"} and dropped.alert_id == "alert-r2"
    assert dropped.status == "provisional" and dropped.model_version == "m-fb"

    # a small labelled data set of the same embedding space: 12 layouts x 4 results
    embeddings = np.repeat(centres, 4, axis=0) + 0.05 * rng.standard_normal((48, dim))
    with DatasetWriter(tmp_path / "data") as writer:
        for i in range(48):
            image = np.full((8, 8), i / 48, dtype=np.float32)
            writer.add(f"item-{i}", image, image, 4.0, {"group": f"g{i // 4}"})
    np.save(tmp_path / "emb.npy", embeddings.astype(np.float32))
    out = tmp_path / "thresholds.json"
    summary_path = tmp_path / "summary.json"
    argv = ["calibrate", "--dataset", str(tmp_path / "data"), "--embeddings", str(tmp_path / "emb.npy")]
    argv += ["--model-version", "m-fb", "--out", str(out), "--per-cluster", "off"]
    argv += ["--json", str(summary_path)]
    assert main([*argv, "--feedback", Topics.FEEDBACK]) == 0
    feedback = json.loads(summary_path.read_text())["feedback"]
    assert feedback["used"] is True
    assert (feedback["known_from_promoted"], feedback["novel_from_dropped"]) == (1, 2)
    assert feedback["reviewers"] == ["ana", "os-user"]
