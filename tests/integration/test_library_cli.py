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
from shared.dataset import DatasetWriter
from shared.kafka_io import read_to_end
from shared.settings import CommonSettings
from shared.testing import library_entry, produce

pytestmark = pytest.mark.integration


def labelled_set(folder: Path, embeddings: np.ndarray) -> None:
    """A small labelled data set (``folder/data``: 12 layouts x 4 results) and its embeddings
    (``folder/emb.npy``), for ``lithowatch calibrate``."""
    with DatasetWriter(folder / "data") as writer:
        for i in range(len(embeddings)):
            image = np.full((8, 8), i / len(embeddings), dtype=np.float32)
            writer.add(f"item-{i}", image, image, 4.0, {"group": f"g{i // 4}"})
    np.save(folder / "emb.npy", embeddings.astype(np.float32))


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
    labelled_set(tmp_path, np.repeat(centres, 4, axis=0) + 0.05 * rng.standard_normal((48, dim)))
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


def test_a_models_library_is_curated_with_model_and_feedback_calibrates_that_model(
    stack: EmbeddedStack,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """During a model switch the same entries are in the old model's library (the base topic)
    and the new model's (its own topic): ``--model``/``--library-topic`` choose which one list,
    promote and drop act on, the decisions carry that model's vectors, and ``calibrate
    --feedback`` of the new model counts only the decisions taken on the new model's library."""
    from services.novelty.reembed import ensure_library_topic
    from shared.contracts import FeedbackRecord
    from shared.index import library_topic

    rng = np.random.default_rng(3)
    old_dim, new_dim = 8, 6
    new_topic = library_topic("enc-v2/abc")  # a model version with a character topics cannot hold
    assert new_topic == f"{Topics.LIBRARY}.enc-v2_abc"

    def provisional(model: str, vectors: np.ndarray) -> list:
        return [
            library_entry(f"provisional/r{i}", vector, model).model_copy(
                update={"status": "provisional", "alert_id": f"alert-r{i}"}
            )
            for i, vector in enumerate(vectors)
        ]

    centres = rng.standard_normal((12, new_dim))
    old_entries = provisional("enc-v1", rng.standard_normal((3, old_dim)))
    new_entries = provisional("enc-v2/abc", centres[:3] + 0.01 * rng.standard_normal((3, new_dim)))
    settings = CommonSettings(kafka_bootstrap=stack.bootstrap)
    produce(stack.bootstrap, Topics.LIBRARY, old_entries)
    assert ensure_library_topic(settings, new_topic)
    produce(stack.bootstrap, new_topic, new_entries)
    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    capfd.readouterr()

    assert main(["library", "list", "--model", "enc-v2/abc"]) == 0
    assert f"3 entries on {new_topic} (model enc-v2/abc)" in capfd.readouterr().out
    assert main(["library", "promote", "r0", "--model", "enc-v2/abc", "--by", "ana"]) == 0
    assert f"promoted 1 entries of {new_topic} (model enc-v2/abc; by ana" in capfd.readouterr().out
    assert main(["library", "drop", "provisional/r1", "--library-topic", new_topic, "--by", "ana"]) == 0
    # the old library is curated on its own: by default, or by its model (held on the base topic)
    assert main(["library", "drop", "r0", "--by", "bo"]) == 0
    assert main(["library", "promote", "r2", "--model", "enc-v1", "--by", "bo"]) == 0
    assert f"of {Topics.LIBRARY} (model enc-v1;" in capfd.readouterr().out

    new = read_library(settings, new_topic)
    assert new["provisional/r0"][0].status == "reference" and "provisional/r1" not in new
    assert new["provisional/r2"][0].status == "provisional"
    [last_r1] = [r for r in read_to_end(settings, new_topic) if r.key == b"provisional/r1"][-1:]
    assert last_r1.value is None  # a tombstone on the new model's topic
    old = read_library(settings, Topics.LIBRARY)
    assert "provisional/r0" not in old and old["provisional/r1"][0].status == "provisional"
    assert old["provisional/r2"][0].status == "reference"

    decisions = [FeedbackRecord.from_wire(r.value) for r in read_to_end(settings, Topics.FEEDBACK)]
    # keyed by entry id: one entry's decisions are in order (the new library's, then the old one's)
    r0 = [d for d in decisions if d.entry_id == "provisional/r0"]
    assert [(d.decision, d.model_version) for d in r0] == [("promoted", "enc-v2/abc"), ("dropped", "enc-v1")]
    assert r0[0].vector == new_entries[0].vector and r0[1].vector == old_entries[0].vector
    assert sorted(
        (d.entry_id, d.decision, d.model_version) for d in decisions if d.entry_id != "provisional/r0"
    ) == [
        ("provisional/r1", "dropped", "enc-v2/abc"),
        ("provisional/r2", "promoted", "enc-v1"),
    ]

    # calibrating the new model: its two decisions, the old model's two left out
    labelled_set(tmp_path, np.repeat(centres, 4, axis=0) + 0.05 * rng.standard_normal((48, new_dim)))
    summary_path = tmp_path / "summary.json"
    argv = ["calibrate", "--dataset", str(tmp_path / "data"), "--embeddings", str(tmp_path / "emb.npy")]
    argv += ["--model-version", "enc-v2/abc", "--out", str(tmp_path / "thresholds.json")]
    argv += ["--per-cluster", "off", "--json", str(summary_path), "--feedback", Topics.FEEDBACK]
    assert main(argv) == 0
    feedback = json.loads(summary_path.read_text())["feedback"]
    assert (feedback["known_from_promoted"], feedback["novel_from_dropped"]) == (1, 1)
    assert feedback["skipped"] == {"other_model": 2} and feedback["reviewers"] == ["ana"]


def test_a_library_that_does_not_exist_is_named_with_those_that_do(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from services.novelty.reembed import ensure_library_topic
    from shared.index import library_topic

    settings = CommonSettings(kafka_bootstrap=stack.bootstrap)
    produce(stack.bootstrap, Topics.LIBRARY, [library_entry("e0", np.ones(8), "enc-v1")])
    ensure_library_topic(settings, library_topic("enc-v2"))
    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    existing = f"library topics on the broker: {Topics.LIBRARY}, {Topics.LIBRARY}.enc-v2"
    capfd.readouterr()
    assert main(["library", "list", "--model", "enc-v3"]) == 2
    err = capfd.readouterr().err
    assert f"no library of model 'enc-v3': {Topics.LIBRARY}.enc-v3 does not exist" in err and existing in err
    assert main(["library", "promote", "e0", "--library-topic", f"{Topics.LIBRARY}.enc-v3", "--by", "a"]) == 2
    assert f"library topic {Topics.LIBRARY}.enc-v3 does not exist; {existing}" in capfd.readouterr().err
    assert main(["library", "drop", "e0", "--library-topic", Topics.SCORES, "--by", "a"]) == 2
    assert f"{Topics.SCORES} is not a library topic" in capfd.readouterr().err
    assert main(["library", "drop", "e0", "--model", "enc-v2", "--by", "a"]) == 2  # its library is empty
    assert f"no such entries in library {Topics.LIBRARY}.enc-v2: e0" in capfd.readouterr().err
    assert not list(read_to_end(settings, Topics.FEEDBACK))  # nothing decided, nothing recorded
