"""Files follow the contracts' compatibility rule too: written strictly, read tolerantly.

A thresholds file or a library snapshot written by a newer lithowatch with an added optional
field (at the top level or nested) loads in a reader that does not know the field; a newer
major version is still refused, and writers still refuse fields they do not know.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from shared.errors import ConfigError
from shared.index import LibraryState, find_snapshot
from shared.index.snapshot import META_FILE, SnapshotMeta, read_meta
from shared.index.thresholds import ScoreReference, ThresholdsFile, load_thresholds, save_thresholds
from shared.testing import library_entry

MODEL = "m-evolution"
DIM = 8


def thresholds() -> ThresholdsFile:
    return ThresholdsFile(
        model_version=MODEL,
        embedding_dim=DIM,
        global_threshold=0.3,
        method="f1_max",
        score_reference=ScoreReference(
            quantiles=[0.0, 0.1, 0.4], bin_edges=[0.2], bin_proportions=[0.75, 0.25], n_scores=4
        ),
    )


def edit_json(path: Path, edit: object) -> None:
    document = json.loads(path.read_text())
    edit(document)  # type: ignore[operator]
    path.write_text(json.dumps(document, indent=2))


def newer_thresholds_fields(document: dict) -> None:
    document["drift_window"] = 500  # a field a newer release added at the top level
    document["score_reference"]["kind"] = "leave-one-out"  # and one nested
    document["candidates"] = [{"method": "f1_max", "threshold": 0.3, "support": 12}]  # and in a list


def test_a_thresholds_file_with_fields_of_a_newer_release_loads(tmp_path: Path) -> None:
    path = save_thresholds(tmp_path / "thresholds.json", thresholds())
    edit_json(path, newer_thresholds_fields)
    loaded = load_thresholds(path)
    assert loaded.global_threshold == 0.3 and loaded.model_version == MODEL
    assert loaded.score_reference == thresholds().score_reference
    assert loaded.candidates[0].threshold == 0.3
    assert "drift_window" not in loaded.model_dump_json()  # what it did not know is not kept


def test_a_thresholds_file_is_still_checked_and_a_newer_major_refused(tmp_path: Path) -> None:
    path = save_thresholds(tmp_path / "thresholds.json", thresholds())
    edit_json(path, lambda d: d.update(global_threshold="high", drift_window=500))
    with pytest.raises(ConfigError, match="global_threshold"):
        load_thresholds(path)
    edit_json(path, lambda d: d.update(global_threshold=0.3, schema_version=2))
    with pytest.raises(ConfigError, match="schema_version 2 is newer"):
        load_thresholds(path)


def test_the_thresholds_writer_stays_strict() -> None:
    with pytest.raises(ValidationError, match="drift_window"):
        ThresholdsFile(model_version=MODEL, global_threshold=0.3, method="f1_max", drift_window=5)  # type: ignore[call-arg]


def snapshot_of_three(root: Path) -> LibraryState:
    rng = np.random.default_rng(0)
    state = LibraryState(MODEL, DIM)
    for offset in range(3):
        state.apply(library_entry(f"e{offset}", rng.standard_normal(DIM), MODEL), 0, offset)
    state.snapshot(root)
    return state


def test_a_library_snapshot_with_fields_of_a_newer_release_restores(tmp_path: Path) -> None:
    before = snapshot_of_three(tmp_path)
    folder = find_snapshot(tmp_path)
    assert folder is not None
    entries = folder / "entries.jsonl"
    lines = [json.loads(line) for line in entries.read_text().splitlines()]
    entries.write_text("".join(json.dumps({**line, "reviewed_by": "ana"}) + "\n" for line in lines))

    def newer_meta(meta: dict) -> None:
        meta["writer"] = "lithowatch 9.9"  # top level
        meta["settings"]["refine_k"] = 4  # nested (the index settings)
        meta["file_sizes_bytes"]["entries.jsonl"] = entries.stat().st_size  # as the newer writer saw it

    edit_json(folder / META_FILE, newer_meta)
    assert read_meta(folder).next_offsets == {0: 3}
    restored = LibraryState.restore(tmp_path, model_version=MODEL, dim=DIM)
    assert len(restored) == 3
    assert restored.get("e1") == before.get("e1")


def test_a_newer_snapshot_format_is_refused_and_the_meta_writer_stays_strict(tmp_path: Path) -> None:
    snapshot_of_three(tmp_path)
    folder = find_snapshot(tmp_path)
    assert folder is not None
    meta = read_meta(folder)
    with pytest.raises(ValidationError, match="writer"):
        SnapshotMeta(**meta.model_dump(), writer="x")
    edit_json(folder / META_FILE, lambda d: d.update(format_version=2))
    with pytest.raises(ConfigError, match="format_version"):
        LibraryState.restore(tmp_path, model_version=MODEL, dim=DIM)
