"""Vector index, snapshots and library state (shared/index)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.contracts import LibraryEntry, Vector
from shared.errors import ConfigError, ContractError
from shared.index import (
    IndexSettings,
    LibraryState,
    TopicState,
    VectorIndex,
    find_snapshot,
    load_snapshot,
    provisional_entry_id,
    save_snapshot,
)
from shared.index.snapshot import LOCK_FILE, read_meta

DIM = 32
MODEL = "enc-v1"


def unit_rows(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def basis(i: int, dim: int = DIM) -> np.ndarray:
    row = np.zeros((1, dim), dtype=np.float32)
    row[0, i] = 1.0
    return row


def ids_for(n: int, prefix: str = "v") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


# Small structures so the switches happen at test sizes; exact search settings for
# IVF (every cell probed, no projection, float codes) make results comparable to flat.
EXACT_IVF = IndexSettings(kind="auto", flat_limit=200, pca_dim=None, sq8=False, nlist=4, nprobe=4)
SMALL_IVF = IndexSettings(kind="auto", flat_limit=200, pca_dim=8, nlist=4, nprobe=2)
SMALL_HNSW = IndexSettings(
    kind="auto", flat_limit=200, approximate_kind="hnsw", pca_dim=16, hnsw_m=8, ef_search=32
)


# -- VectorIndex --------------------------------------------------------------------------------


def test_upsert_remove_search_on_known_vectors() -> None:
    index = VectorIndex(DIM, IndexSettings(kind="flat"))
    index.add(["a", "b", "c"], np.concatenate([basis(0), basis(1), basis(2)]))
    result = index.search(basis(0), k=2)
    assert result.ids[0][0] == "a"
    assert result.similarities[0, 0] == pytest.approx(1.0)
    assert result.similarities[0, 1] == pytest.approx(0.0)

    index.add(["a"], basis(3))  # upsert: "a" now points along axis 3
    assert len(index) == 3
    assert index.search(basis(3), k=1).hits(0) == [("a", pytest.approx(1.0))]
    assert index.search(basis(0), k=1).similarities[0, 0] == pytest.approx(0.0)

    assert index.remove(["b", "missing"]) == 1
    assert "b" not in index
    assert set(index.search(basis(1), k=5).ids[0]) == {"a", "c"}
    assert index.ids() == ["c", "a"]


def test_repeated_id_within_one_add_keeps_last_row() -> None:
    index = VectorIndex(DIM)
    index.add(["a", "a"], np.concatenate([basis(0), basis(1)]))
    assert len(index) == 1
    assert index.search(basis(1), k=1).hits(0) == [("a", pytest.approx(1.0))]


def test_identical_vector_has_cosine_one_and_ranks_first() -> None:
    vectors = unit_rows(50)
    index = VectorIndex(DIM)
    index.add(ids_for(50), vectors)
    result = index.search(vectors, k=3)
    assert [row[0] for row in result.ids] == ids_for(50)
    np.testing.assert_allclose(result.similarities[:, 0], 1.0, atol=1e-5)
    assert result.k == 3 and len(result) == 50


def test_reserved_flat_storage_fills_correctly() -> None:
    vectors = unit_rows(100, seed=9)
    index = VectorIndex(DIM)
    index.add(["first"], basis(0))
    index.reserve(101)
    index.add(ids_for(100), vectors)
    assert index.search(vectors[-1], k=1).ids == (("v00099",),)
    assert index.search(basis(0), k=1).ids == (("first",),)


def test_fewer_vectors_than_k_pads_with_minus_infinity() -> None:
    index = VectorIndex(DIM)
    assert index.search(basis(0), k=2).ids == ((),)
    index.add(["a"], basis(0))
    result = index.search(basis(0), k=3)
    assert result.ids == (("a",),)
    assert np.isneginf(result.similarities[0, 1:]).all()


@pytest.mark.parametrize(
    ("vectors", "reason"),
    [
        (unit_rows(2, DIM + 1), "vector_dim"),
        (unit_rows(2)[0], "vector_dim"),
        (unit_rows(2).astype(np.float64), "vector_dtype"),
        (np.asfortranarray(unit_rows(2)), "vector_layout"),
        (np.where(np.eye(2, DIM, dtype=bool), np.nan, unit_rows(2)).astype(np.float32), "vector_nonfinite"),
        (unit_rows(2) * np.float32(2.0), "vector_norm"),
    ],
)
def test_add_refuses_broken_arrays_and_changes_nothing(vectors: np.ndarray, reason: str) -> None:
    index = VectorIndex(DIM)
    index.add(["kept"], basis(0))
    with pytest.raises(ContractError) as caught:
        index.add(["x", "y"][: len(vectors) if vectors.ndim == 2 else 1], vectors)
    assert caught.value.reason == reason
    assert index.ids() == ["kept"]


def test_search_refuses_wrong_dim_and_nan() -> None:
    index = VectorIndex(DIM)
    index.add(["a"], basis(0))
    with pytest.raises(ContractError) as caught:
        index.search(unit_rows(1, DIM - 1), k=1)
    assert caught.value.reason == "vector_dim"
    query = basis(0)
    query[0, 1] = np.nan
    with pytest.raises(ContractError) as caught:
        index.search(query, k=1)
    assert caught.value.reason == "vector_nonfinite"


@pytest.mark.parametrize(("settings", "kind"), [(EXACT_IVF, "ivf"), (SMALL_HNSW, "hnsw")])
def test_auto_switches_kind_past_the_flat_limit(settings: IndexSettings, kind: str) -> None:
    vectors = unit_rows(260, seed=1)
    index = VectorIndex(DIM, settings)
    index.add(ids_for(200), vectors[:200])
    assert index.kind == "flat"
    index.add(ids_for(260)[200:201], vectors[200:201])
    assert index.kind == kind
    index.add(ids_for(260)[201:], vectors[201:])
    assert len(index) == 260
    # Still finds each vector (projected similarity for the PCA'd HNSW).
    top = index.search(vectors, k=1)
    assert sum(row[0] == entry_id for row, entry_id in zip(top.ids, ids_for(260), strict=True)) >= 250
    # Remove and upsert keep working on the approximate structure.
    index.remove(["v00000", "v00250"])
    index.add(["v00001"], vectors[2:3])
    assert "v00000" not in index and len(index) == 258
    found = index.search(vectors[:1], k=260).ids[0]
    assert "v00000" not in found and "v00250" not in found
    assert index.search(vectors[2:3], k=2).ids[0][:2] in {("v00001", "v00002"), ("v00002", "v00001")}


def test_exact_ivf_matches_flat_results() -> None:
    vectors, queries = unit_rows(300, seed=2), unit_rows(20, seed=3)
    flat = VectorIndex.build(ids_for(300), vectors, IndexSettings(kind="flat"))
    ivf = VectorIndex.build(ids_for(300), vectors, EXACT_IVF)
    assert (flat.kind, ivf.kind) == ("flat", "ivf")
    assert flat.search(queries, 5).ids == ivf.search(queries, 5).ids


@pytest.mark.parametrize("pca_dim", [16, None])
def test_hnsw_removal_masks_then_compacts(pca_dim: int | None) -> None:
    vectors = unit_rows(300, seed=4)
    index = VectorIndex.build(ids_for(300), vectors, SMALL_HNSW.model_copy(update={"pca_dim": pca_dim}))
    assert index.kind == "hnsw"
    index.remove(ids_for(300)[:10])
    assert index.state().masked_labels == list(range(10))
    assert not set(index.search(vectors[:10], k=20).ids[0]) & set(ids_for(10))
    index.remove(ids_for(300)[10:100])  # past the compaction fraction
    assert index.state().masked_labels == []
    assert index.faiss_index.ntotal == 200
    assert index.search(vectors[150:151], k=1).ids[0] == ("v00150",)


# -- snapshots ----------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [IndexSettings(kind="flat"), SMALL_IVF, SMALL_HNSW])
def test_snapshot_round_trip_gives_identical_results(tmp_path: Path, settings: IndexSettings) -> None:
    vectors, queries = unit_rows(260, seed=5), unit_rows(15, seed=6)
    index = VectorIndex(DIM, settings)
    index.add(ids_for(260), vectors)
    index.remove(["v00003"])
    save_snapshot(tmp_path / "snap", index, model_version=MODEL, next_offsets={0: 17})
    loaded = load_snapshot(tmp_path / "snap", expected_model_version=MODEL, expected_dim=DIM)
    assert loaded.meta.next_offsets == {0: 17}
    assert loaded.meta.kind == index.kind and loaded.index.kind == index.kind
    assert loaded.index.ids() == index.ids()
    before, after = index.search(queries, 10), loaded.index.search(queries, 10)
    assert before.ids == after.ids
    np.testing.assert_array_equal(before.similarities, after.similarities)
    # The restored index keeps growing the same way as the original.
    for target in (index, loaded.index):
        target.add(["new"], queries[:1])
    assert index.search(queries, 10).ids == loaded.index.search(queries, 10).ids


def test_snapshot_refuses_other_model_version_dim_and_absence(tmp_path: Path) -> None:
    index = VectorIndex(DIM)
    index.add(["a"], basis(0))
    save_snapshot(tmp_path, index, model_version=MODEL)
    with pytest.raises(ConfigError, match="enc-v2"):
        load_snapshot(tmp_path, expected_model_version="enc-v2")
    with pytest.raises(ConfigError, match="dimension"):
        load_snapshot(tmp_path, expected_model_version=MODEL, expected_dim=DIM * 2)
    with pytest.raises(ConfigError, match="no index snapshot"):
        load_snapshot(tmp_path / "empty", expected_model_version=MODEL)


def test_snapshot_is_swapped_atomically_and_old_ones_pruned(tmp_path: Path) -> None:
    index = VectorIndex(DIM)
    paths = []
    for i in range(3):
        index.add([f"e{i}"], basis(i))
        paths.append(save_snapshot(tmp_path, index, model_version=MODEL, keep=2))
    assert find_snapshot(tmp_path) == paths[-1]
    assert not paths[0].exists() and paths[1].exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]
    assert load_snapshot(tmp_path, expected_model_version=MODEL).index.ids() == ["e0", "e1", "e2"]
    (paths[-1] / "ids.json").write_text("{}")
    with pytest.raises(ConfigError, match="truncated"):
        load_snapshot(tmp_path, expected_model_version=MODEL)


# -- LibraryState -------------------------------------------------------------------------------


def entry(entry_id: str, vector: np.ndarray | None, **fields: object) -> LibraryEntry:
    payload: dict[str, object] = {"entry_id": entry_id, "model_version": MODEL, **fields}
    if vector is not None:
        payload["vector"] = Vector.from_array(vector)
    return LibraryEntry.model_validate(payload)


def test_library_last_record_wins_and_tombstones() -> None:
    state = LibraryState(MODEL, DIM)
    assert state.apply(entry("a", basis(0), labels={"family": "x"}), 0, 0) == "upserted"
    assert state.apply(entry("b", basis(1)), 0, 1) == "upserted"
    assert state.apply(entry("a", basis(2), labels={"family": "y"}), 0, 2) == "upserted"
    assert len(state) == 2
    best = state.neighbours(basis(2)[0], k=1)[0]
    assert (best.id, best.similarity, best.labels) == ("a", pytest.approx(1.0), {"family": "y"})
    assert state.neighbours(basis(0)[0], k=1)[0].similarity == pytest.approx(0.0)

    assert state.apply(entry("a", None, op="delete"), 0, 3) == "deleted"
    assert "a" not in state and [n.id for n in state.neighbours(basis(2)[0], k=5)] == ["b"]
    assert state.apply(entry("a", None, op="delete"), 0, 4) == "ignored"
    assert state.apply(entry("a", basis(0)), 0, 2) == "ignored"  # redelivered old offset
    assert "a" not in state
    assert state.next_offsets == {0: 5}


def test_library_tracks_provisional_entries_until_promoted() -> None:
    state = LibraryState(MODEL, DIM)
    state.apply(entry("ref", basis(0)), 0, 0)
    state.apply(entry("new", basis(1), status="provisional", alert_id="alert-7"), 1, 0)
    assert state.provisional() == {"new": "alert-7"}
    found = state.neighbours(basis(1)[0], k=2)
    assert (found[0].id, found[0].provisional, found[0].alert_id) == ("new", True, "alert-7")
    assert [n.id for n in state.neighbours(basis(1)[0], k=1, exclude={"new"})] == ["ref"]
    # Promotion re-publishes the same vector as a reference: metadata only.
    assert state.apply(entry("new", basis(1), status="reference"), 1, 1) == "updated"
    assert state.provisional() == {}
    assert state.neighbours(basis(1)[0], k=1)[0].provisional is False


def test_library_refuses_other_model_or_dim_but_consumes_the_offset() -> None:
    state = LibraryState(MODEL, DIM)
    state.apply(entry("a", basis(0)), 0, 0)
    with pytest.raises(ContractError, match="enc-v9") as caught:
        state.apply(entry("a", basis(1)).model_copy(update={"model_version": "enc-v9"}), 0, 1)
    assert caught.value.reason == "model_version"
    with pytest.raises(ContractError, match="64-d") as caught:
        state.apply(entry("b", unit_rows(1, 64)), 0, 2)
    assert caught.value.reason == "vector_dim"
    with pytest.raises(ContractError) as caught:
        state.apply(entry("c", basis(0) * 3), 0, 3)
    assert caught.value.reason == "vector_norm"
    assert state.index.ids() == ["a"] and state.neighbours(basis(0)[0], k=1)[0].id == "a"
    assert state.next_offsets == {0: 4}


def apply_or_refuse(state: LibraryState, record: tuple[LibraryEntry, int, int]) -> str:
    """Apply like the library feed: a refused record (e.g. a provisional upsert of a reference
    id) leaves the entries as they were, its offset consumed."""
    try:
        return state.apply(*record)
    except ContractError as exc:
        return exc.reason


def _records(seed: int) -> list[tuple[LibraryEntry, int, int]]:
    """A stream over two partitions with upserts, re-upserts, promotions and deletes."""
    rng = np.random.default_rng(seed)
    vectors = unit_rows(330, seed=seed)
    offsets = {0: 0, 1: 0}
    stream = []
    for i in range(330):
        key = f"e{int(rng.integers(0, 280)):03d}"
        partition = int(key[-1]) % 2
        roll = rng.random()
        if roll < 0.1:
            record = entry(key, None, op="delete")
        elif roll < 0.2:
            record = entry(key, vectors[i], status="provisional", alert_id=f"al-{i}")
        else:
            record = entry(key, vectors[i], labels={"i": i})
        stream.append((record, partition, offsets[partition]))
        offsets[partition] += 1
    return stream


@pytest.mark.parametrize("snapshot_after", [100, 260])  # before / after the switch (record 176)
@pytest.mark.parametrize("settings", [IndexSettings(kind="flat"), SMALL_IVF, SMALL_HNSW])
def test_restore_and_replay_equals_full_replay(
    tmp_path: Path, settings: IndexSettings, snapshot_after: int
) -> None:
    settings = settings.model_copy(update={"flat_limit": 120})
    stream = _records(seed=11)
    queries = unit_rows(25, seed=12)
    full = LibraryState(MODEL, DIM, settings)
    for record in stream:
        apply_or_refuse(full, record)
    assert full.index.kind == settings.target_kind()

    early = LibraryState(MODEL, DIM, settings)
    for record in stream[:snapshot_after]:
        apply_or_refuse(early, record)
    early.snapshot(tmp_path)
    replica = LibraryState.restore(tmp_path, model_version=MODEL, dim=DIM)
    resume = replica.next_offsets
    for record in stream:  # replay everything; offsets below the snapshot's are ignored
        outcome = apply_or_refuse(replica, record)
        if record[2] < resume.get(record[1], 0):
            assert outcome == "ignored"

    assert replica.index.kind == full.index.kind
    assert replica.index.ids() == full.index.ids()
    assert replica.provisional() == full.provisional()
    assert replica.next_offsets == full.next_offsets
    mine, theirs = replica.neighbours_batch(queries, 5), full.neighbours_batch(queries, 5)
    assert mine == theirs


def test_library_restore_refuses_other_model_version(tmp_path: Path) -> None:
    state = LibraryState(MODEL, DIM)
    state.apply(entry("a", basis(0)), 0, 0)
    state.snapshot(tmp_path)
    with pytest.raises(ConfigError, match="enc-v2"):
        LibraryState.restore(tmp_path, model_version="enc-v2")
    restored = LibraryState.restore(tmp_path, model_version=MODEL)
    assert restored.get("a") == state.get("a") and restored.next_offsets == {0: 1}


def test_search_thread_team_never_exceeds_the_batch() -> None:
    """A one-query search runs on one OpenMP thread; the caller's setting is restored."""
    import faiss

    from shared.index.builders import threads_at_most

    before = faiss.omp_get_max_threads()
    with threads_at_most(1):
        assert faiss.omp_get_max_threads() == 1
    with threads_at_most(10_000):
        assert faiss.omp_get_max_threads() == before
    assert faiss.omp_get_max_threads() == before


# -- several writers, stale snapshots, reference entries, provisional bound ------------------------


def _write_snapshots(root: str, writer: int, count: int) -> list[str]:
    """A replica writing ``count`` snapshots of its own library into the shared ``root``."""
    state = LibraryState(MODEL, DIM)
    written = []
    for i in range(count):
        state.apply(entry(f"w{writer}-{i}", unit_rows(1, seed=writer * 1000 + i)[0]), 0, i)
        written.append(state.snapshot(Path(root), keep=2).name)
    return written


def test_two_writers_on_one_folder_both_succeed_and_it_stays_consistent(tmp_path: Path) -> None:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_write_snapshots, str(tmp_path), writer, 15) for writer in (1, 2)]
        written = [name for future in futures for name in future.result()]  # neither raised
    assert len(set(written)) == len(written) == 30  # every snapshot got a name of its own
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("snapshot-"))
    assert len(kept) == 2 and not list(tmp_path.glob(".tmp-*"))
    current = find_snapshot(tmp_path)
    assert current is not None and current.name in kept
    restored = LibraryState.restore(tmp_path, model_version=MODEL)
    # the current snapshot is one writer's complete library as of one of its snapshots
    ids = set(restored.index.ids())
    writer = next(iter(ids)).split("-")[0]
    assert ids == {f"{writer}-{i}" for i in range(len(ids))}
    assert restored.next_offsets == {0: len(ids)}


def test_a_snapshot_of_another_incarnation_of_the_topic_is_refused(tmp_path: Path) -> None:
    state = LibraryState(MODEL, DIM)
    for i in range(5):
        state.apply(entry(f"e{i}", basis(i)), 0, i)
    state.snapshot(tmp_path, topic_id="topic-a")
    assert read_meta(find_snapshot(tmp_path) or tmp_path).topic_id == "topic-a"

    same = TopicState("topic-a", {0: (0, 9)})
    assert len(LibraryState.restore(tmp_path, model_version=MODEL, topic=same)) == 5
    # Tansu reports the end of a batch-written partition short (5 records in one batch end at 1):
    # with the same topic id, a stored offset past that end is not held against the snapshot
    short_end = TopicState("topic-a", {0: (0, 1)})
    assert len(LibraryState.restore(tmp_path, model_version=MODEL, topic=short_end)) == 5
    for topic, why in [
        (TopicState("topic-b", {0: (0, 9)}), "deleted and recreated"),  # more records, new id
        (TopicState(None, {0: (0, 3)}), "past the topic's end"),  # no ids: fewer records than read
        (TopicState("topic-a", {0: (7, 9)}), "records in between are gone"),
        (TopicState("topic-a", {1: (0, 9)}), "no longer exists"),
    ]:
        with pytest.raises(ConfigError, match=why):
            LibraryState.restore(tmp_path, model_version=MODEL, topic=topic)
    # without a recorded id, offsets alone decide
    state.snapshot(tmp_path)
    assert len(LibraryState.restore(tmp_path, model_version=MODEL, topic=TopicState("x", {0: (0, 5)}))) == 5


def test_a_provisional_upsert_never_replaces_a_reference_entry() -> None:
    state = LibraryState(MODEL, DIM)
    state.apply(entry("clip-1", basis(0)), 0, 0)
    with pytest.raises(ContractError) as caught:
        state.apply(entry("clip-1", basis(1), status="provisional", alert_id="alert-clip-1"), 0, 1)
    assert caught.value.reason == "reference_demotion"
    kept = state.get("clip-1")
    assert kept is not None and kept.status == "reference" and state.provisional() == {}
    assert state.neighbours(basis(0)[0], k=1)[0].id == "clip-1"
    # the novelty stage's id for the same result is another key: both live side by side
    novel_id = provisional_entry_id("clip-1")
    assert novel_id != "clip-1"
    state.apply(entry(novel_id, basis(1), status="provisional", alert_id="alert-clip-1"), 0, 2)
    assert state.provisional() == {novel_id: "alert-clip-1"} and len(state) == 2
    # dropped, then re-added as provisional: allowed (nothing to demote)
    state.apply(entry("clip-1", None, op="delete"), 0, 3)
    state.apply(entry("clip-1", basis(2), status="provisional"), 0, 4)
    assert "clip-1" in state.provisional()


def test_provisional_entries_are_bounded_oldest_first_and_leave_the_index() -> None:
    from datetime import UTC, datetime, timedelta

    start = datetime(2024, 1, 1, tzinfo=UTC)
    state = LibraryState(MODEL, DIM, max_provisional=10)
    state.apply(entry("ref", basis(0)), 0, 0)
    vectors = unit_rows(30, seed=21)
    for i in range(30):
        record = entry(
            f"p{i:02d}", vectors[i], status="provisional", created_at=start + timedelta(seconds=i)
        )
        state.apply(record, 0, i + 1)
        assert state.provisional_count <= 10
    # evicted down to 9 when the 11th came, so: 30 added, the newest kept
    kept = sorted(state.provisional())
    assert kept == [f"p{i:02d}" for i in range(30 - len(kept), 30)]
    assert state.evicted_total == 30 - len(kept)
    assert len(state.index) == len(kept) + 1 == len(state)  # evicted vectors left the index too
    assert state.index.faiss_index.ntotal == len(state)
    found = {n.id for n in state.neighbours(vectors[0], k=40)}
    assert "p00" not in found and "ref" in found
    # a record older than every kept one is evicted at once; a promotion is never evicted
    state.apply(entry("older", vectors[1], status="provisional", created_at=start - timedelta(days=1)), 0, 40)
    state.apply(entry(kept[0], vectors[30 - len(kept)]), 0, 41)  # promoted: reference now
    assert "older" not in state and state.get(kept[0]) is not None
    assert state.provisional_count <= 10


def test_restore_applies_the_provisional_bound(tmp_path: Path) -> None:
    state = LibraryState(MODEL, DIM)
    vectors = unit_rows(20, seed=22)
    for i in range(20):
        state.apply(entry(f"p{i:02d}", vectors[i], status="provisional"), 0, i)
    state.snapshot(tmp_path)
    restored = LibraryState.restore(tmp_path, model_version=MODEL, max_provisional=5)
    assert restored.provisional_count <= 5 and len(restored.index) == restored.provisional_count
    assert restored.evicted_total == 20 - restored.provisional_count
