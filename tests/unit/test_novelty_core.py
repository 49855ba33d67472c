"""The novelty core's verdicts on a real in-memory library (pure logic, no broker).

The library is the real :class:`LibraryState`; the provisional entries the core adds are applied
to it the way the library feed does (``read_back``), so what the replica would see is what is tested.
"""

from __future__ import annotations

import contextlib
import hashlib
import tracemalloc
from typing import Any

import numpy as np
import pytest

from services.novelty.core import NoveltyConfig, NoveltyCore, Outcome, Scored
from shared.contracts import (
    DuplicateRecord,
    EmbeddedResult,
    Hashes,
    LibraryEntry,
    Neighbour,
    ScoreRecord,
    Vector,
)
from shared.errors import ContractError, DependencyUnavailable, InputError, TransientError
from shared.index import LibraryState, provisional_entry_id
from shared.index.policy import ThresholdPolicy
from shared.index.thresholds import ThresholdsFile
from shared.testing import embedded_result

MODEL = "enc-v1"
DIM = 32


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def centre(i: int) -> np.ndarray:
    vector = np.zeros(DIM, np.float32)
    vector[i] = 1.0
    return vector


def near(i: int, rng: np.random.Generator, spread: float = 0.03) -> np.ndarray:
    return unit(centre(i) + spread * rng.standard_normal(DIM).astype(np.float32))


_TEMPLATE: dict[str, EmbeddedResult] = {}


def result(
    result_id: str, vector: np.ndarray, model: str = MODEL, exact: str | None = None
) -> EmbeddedResult:
    """An embedded result (one template's images, so thousands are cheap)."""
    if "t" not in _TEMPLATE:
        _TEMPLATE["t"] = embedded_result("template", centre(0), model_version=MODEL)
    return _TEMPLATE["t"].model_copy(
        update={
            "result_id": result_id,
            "embedding": Vector.from_array(unit(vector)),
            "model_version": model,
            "hashes": Hashes(exact=exact or hashlib.sha256(result_id.encode()).hexdigest()),
        }
    )


def reference(entry_id: str, vector: np.ndarray, exact: str | None = None) -> LibraryEntry:
    return LibraryEntry(
        entry_id=entry_id,
        vector=Vector.from_array(unit(vector)),
        model_version=MODEL,
        hashes=Hashes(exact=exact) if exact else None,
    )


class Replica:
    """A library and a core wired as in the service: outputs on the library topic are read back."""

    def __init__(self, threshold: float = 0.2, max_provisional: int = 10_000, **config: Any) -> None:
        self.library: LibraryState | None = None
        self.offset = 0
        thresholds = ThresholdsFile(model_version=MODEL, global_threshold=threshold, method="fixed")
        policy = ThresholdPolicy(thresholds)
        self.max_provisional = max_provisional
        self.core = NoveltyCore(
            lambda: self.library,
            lambda: policy,
            NoveltyConfig(max_provisional=max_provisional, **config),
        )

    def publish(self, entry: LibraryEntry) -> None:
        if self.library is None:
            assert entry.vector is not None
            self.library = LibraryState(
                entry.model_version, entry.vector.dim, max_provisional=self.max_provisional
            )
        with contextlib.suppress(ContractError):  # refused, as the feed does (logged there)
            self.library.apply(entry, 0, self.offset)
        self.offset += 1
        self.core.pending.forget(entry.entry_id)

    def read_back(self, outcome: Outcome) -> None:
        """The library topic delivers the provisional entry a novel result added."""
        if isinstance(outcome, Scored) and outcome.provisional_entry is not None:
            self.publish(outcome.provisional_entry)


def scored(outcome: Outcome) -> Scored:
    assert isinstance(outcome, Scored), outcome
    return outcome


def stable(outcome: Outcome) -> list[dict[str, Any] | None]:
    """A verdict's records without the times they were made at (what a redelivery must reproduce)."""
    verdict = scored(outcome)
    return [
        None if record is None else record.model_dump(exclude={"scored_at", "raised_at", "created_at"})
        for record in (verdict.score, verdict.alert, verdict.provisional_entry)
    ]


def score_of(outcome: Outcome) -> ScoreRecord:
    return scored(outcome).score


def with_library(**config: Any) -> Replica:
    rng = np.random.default_rng(0)
    replica = Replica(**config)
    for c in range(4):
        for j in range(3):
            replica.publish(reference(f"lib-{c}-{j}", near(c, rng), exact=f"{c:02d}{j:062d}"))
    return replica


# -- waiting instead of dead-lettering --------------------------------------------------------------


def test_an_empty_library_makes_results_wait_instead_of_dead_lettering_them() -> None:
    core = NoveltyCore(lambda: None, lambda: None)  # type: ignore[arg-type,return-value]
    item: Any = object()  # never looked at: the library is checked first
    with pytest.raises(TransientError, match="library is empty"):
        core.score(item)


def test_results_of_another_model_wait_and_nothing_of_their_batch_is_scored() -> None:
    replica = with_library()
    rng = np.random.default_rng(1)
    batch = [result("novel-first", near(20, rng)), result("new-model", near(0, rng), model="enc-v2")]
    with pytest.raises(DependencyUnavailable, match="'enc-v2' wait: the library holds model 'enc-v1'"):
        replica.core.process_batch(batch)
    assert len(replica.core.pending) == 0  # the novel result before it was not scored either
    with pytest.raises(DependencyUnavailable):
        replica.core.score(batch[1])
    # a library of the new model appears (the service restarted on it): the results are scored
    switched = Replica()
    switched.publish(reference("lib-v2", near(0, rng)).model_copy(update={"model_version": "enc-v2"}))
    assert switched.library is not None and switched.library.model_version == "enc-v2"
    scored = switched.core.process_batch([batch[1]])
    assert not isinstance(scored[0], InputError) and score_of(scored[0]).decision == "known"


def test_retired_models_are_dead_lettered_and_a_bad_vector_of_the_library_model_too() -> None:
    replica = with_library(retired_models=frozenset({"enc-v0"}))
    rng = np.random.default_rng(2)
    wrong_dim = result("wrong-dim", near(0, rng)).model_copy(
        update={"embedding": Vector.from_array(unit(np.ones(DIM + 3, np.float32)))}
    )
    verdicts = replica.core.process_batch(
        [result("old", near(0, rng), model="enc-v0"), wrong_dim, result("fine", near(1, rng))]
    )
    assert isinstance(verdicts[0], InputError) and verdicts[0].reason == "model_retired"
    assert isinstance(verdicts[1], InputError) and verdicts[1].reason == "vector_dim"
    assert not isinstance(verdicts[2], InputError) and score_of(verdicts[2]).decision == "known"


# -- reused result ids -----------------------------------------------------------------------------


def test_provisional_entries_never_share_an_id_with_a_reference_entry() -> None:
    replica = with_library(threshold=1e-6)  # everything short of the very same vector is novel
    rng = np.random.default_rng(3)
    stored = replica.library.get("lib-2-0") if replica.library else None
    assert stored is not None
    # the same clip (same pixel digest) as reference lib-2-0, embedded a little differently
    item = result("lib-2-0", near(2, rng), exact=stored.exact_hash)
    outcome = replica.core.score(item)
    assert score_of(outcome).decision == "novel"
    entry = scored(outcome).provisional_entry
    assert isinstance(entry, LibraryEntry) and entry.status == "provisional"
    assert entry.entry_id == provisional_entry_id("lib-2-0") != "lib-2-0"
    replica.read_back(outcome)
    assert replica.library is not None
    kept = replica.library.get("lib-2-0")
    assert kept is not None and kept.status == "reference" and kept.vector_digest == stored.vector_digest
    assert provisional_entry_id("lib-2-0") in replica.library.provisional()


def test_replaying_the_library_s_own_data_set_scores_it_known_and_demotes_nothing() -> None:
    rng = np.random.default_rng(4)
    vectors = {f"clip-{i}": near(i % DIM, rng) for i in range(12)}
    replica = Replica()
    for clip_id, vector in vectors.items():
        replica.publish(reference(clip_id, vector, exact=f"{int(clip_id[5:]):064d}"))
    replay = [result(clip_id, v, exact=f"{int(clip_id[5:]):064d}") for clip_id, v in vectors.items()]
    replay += [result(f"{clip_id}-nohash", vector) for clip_id, vector in list(vectors.items())[:2]]
    for outcome in replica.core.process_batch(replay):
        score = score_of(outcome)
        assert score.decision == "known", score.result_id
        if not score.result_id.endswith("-nohash"):
            assert score.neighbours[0].id == score.result_id and score.novelty_score < 1e-5
        assert scored(outcome).alert is None and scored(outcome).provisional_entry is None
        replica.read_back(outcome)
    assert replica.library is not None and replica.library.provisional() == {}
    assert all(item.status == "reference" for item in map(replica.library.get, vectors) if item)
    # without pixel digests on the stored side the vectors decide: the same vector is the same clip
    bare = Replica()
    bare.publish(reference("clip-0", vectors["clip-0"]))
    (outcome,) = bare.core.process_batch([result("clip-0", vectors["clip-0"])])
    assert score_of(outcome).decision == "known"


def test_a_reused_result_id_with_other_content_is_dead_lettered() -> None:
    replica = with_library()
    rng = np.random.default_rng(5)
    # a reference entry's id with another clip's pixels (and vector)
    (verdict,) = replica.core.process_batch([result("lib-1-1", near(9, rng), exact="f" * 64)])
    assert isinstance(verdict, InputError) and verdict.reason == "result_id_reused"
    # a reference entry without a digest: another vector under its id
    replica.publish(reference("bare", centre(7)))
    (verdict,) = replica.core.process_batch([result("bare", near(11, rng))])
    assert isinstance(verdict, InputError) and verdict.reason == "result_id_reused"
    # a novel result, then its id again with other content: before and after the read-back
    first = result("novel-1", near(20, rng), exact="a" * 64)
    outcome = replica.core.score(first)
    assert score_of(outcome).decision == "novel"
    other = result("novel-1", near(25, rng), exact="b" * 64)
    (verdict,) = replica.core.process_batch([other])  # against this replica's pending entry
    assert isinstance(verdict, InputError) and verdict.reason == "result_id_reused"
    replica.read_back(outcome)
    (verdict,) = replica.core.process_batch([other])  # against the library's provisional entry
    assert isinstance(verdict, InputError) and verdict.reason == "result_id_reused"
    # the very same result again is a redelivery: the same records
    (again,) = replica.core.process_batch([first])
    assert stable(again) == stable(outcome)


# -- bounded growth and idempotent retries ------------------------------------------------------


def test_noise_keeps_provisional_entries_bounded() -> None:
    cap = 200
    replica = Replica(threshold=0.05, max_provisional=cap)
    replica.publish(reference("ref", centre(0)))
    rng = np.random.default_rng(6)
    noise = rng.standard_normal((5_000, DIM)).astype(np.float32)
    decisions: dict[str, int] = {}
    try:
        for i, vector in enumerate(noise):
            if i == 1_000:  # well past the bound: what is allocated from here on and kept is growth
                tracemalloc.start()
            outcome = replica.core.score(result(f"noise-{i}", vector))
            decision = score_of(outcome).decision
            decisions[decision] = decisions.get(decision, 0) + 1
            replica.read_back(outcome)
            assert replica.library is not None
            assert replica.library.provisional_count <= cap and len(replica.core.pending) <= cap
        grown = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert decisions.get("novel", 0) > 4_000  # the noise really is novel: one entry each
    assert replica.library is not None
    assert replica.library.evicted_total >= decisions["novel"] - cap
    assert len(replica.library.index) == len(replica.library) <= cap + 1
    assert replica.library.index.faiss_index.ntotal == len(replica.library)
    assert grown < 2 * 1024 * 1024, f"{grown} bytes more after 4,000 further results"


def test_pending_entries_are_bounded_when_nothing_is_read_back() -> None:
    replica = Replica(threshold=0.05, max_provisional=50)
    replica.publish(reference("ref", centre(0)))
    rng = np.random.default_rng(7)
    for i in range(300):
        replica.core.score(result(f"lost-{i}", rng.standard_normal(DIM)))
    assert len(replica.core.pending) == 50
    assert "provisional/lost-299" in replica.core.pending
    assert "provisional/lost-0" not in replica.core.pending


def test_a_retried_batch_adds_nothing_twice_and_decides_the_same() -> None:
    replica = with_library()
    e0, e1 = centre(20), centre(21)
    replica.publish(
        LibraryEntry(
            entry_id="provisional/earlier",
            status="provisional",
            vector=Vector.from_array(unit(e0)),
            model_version=MODEL,
            alert_id="alert-earlier",
        )
    )
    # "first" is within the threshold of the earlier entry (0.894); "second" is novel (0.707 to
    # that entry) but nearer to "first" (0.949): a retry must not let "first" see "second"'s entry
    batch = [result("first", e0 + 0.5 * e1), result("second", 0.7 * e0 + 0.7 * e1)]
    first_attempt = replica.core.process_batch(batch)
    scores = [score_of(r) for r in first_attempt]
    assert [(s.decision, s.provisional_of) for s in scores] == [
        ("provisional", "alert-earlier"),
        ("novel", None),
    ]
    assert list(replica.core.pending.entries) == ["provisional/second"]
    # produce failed: the runtime retries the same batch, maybe after the library read some back
    for read_back in (False, True):
        if read_back:
            for outcome in first_attempt:
                replica.read_back(outcome)
        retry = replica.core.process_batch(batch)
        assert [stable(r) for r in retry] == [stable(r) for r in first_attempt]
        assert list(replica.core.pending.entries) == ["provisional/second"]  # never twice
    # a single result retried alone: one pending entry, whatever the number of attempts
    lonely = result("lonely", centre(30))
    for _ in range(3):
        replica.core.process_batch([lonely])
    assert list(replica.core.pending.entries) == ["provisional/second", "provisional/lonely"]


# -- the hybrid confirmation hook -------------------------------------------------------------------


def test_a_confirmed_duplicate_is_the_verdict_and_adds_no_provisional_entry() -> None:
    asked: list[tuple[str, list[str]]] = []

    def confirm(
        item: EmbeddedResult, vector: np.ndarray, neighbours: list[Neighbour]
    ) -> DuplicateRecord | None:
        asked.append((item.result_id, [n.id for n in neighbours]))
        if not item.result_id.startswith("resim"):
            return None
        return DuplicateRecord(
            result_id=item.result_id,
            duplicate_of=neighbours[0].id,
            method="embedding+hash",
            distance=round(1.0 - neighbours[0].similarity, 6),
            stage="novelty",
            produced_at=item.produced_at,
        )

    replica = with_library(threshold=1e-6)  # without the hook both would be novel
    replica.core.confirm = confirm
    rng = np.random.default_rng(8)
    resim, other = result("resim-1", near(3, rng, 0.01)), result("other-1", near(3, rng, 0.01))
    duplicate, novel = replica.core.process_batch([resim, other])
    assert isinstance(duplicate, DuplicateRecord) and duplicate.duplicate_of.startswith("lib-3-")
    assert score_of(novel).decision == "novel"
    assert list(replica.core.pending.entries) == ["provisional/other-1"]  # none for the duplicate
    assert [rid for rid, _ in asked] == ["resim-1", "other-1"]
    assert all(ids and all(i.startswith("lib-3-") for i in ids[:3]) for _, ids in asked)
