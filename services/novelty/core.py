"""The novelty stage's pure core: kNN cosine against the library, threshold, alerts, storm control.

For each embedded result (pure logic; the library and thresholds are handed in) the
outcome is :class:`Scored` (the score, plus the alert and the provisional library entry
of a novel result), a :class:`DuplicateRecord` from the hybrid confirmation hook, or the
:class:`InputError` that rejects it; the stage adapter (:mod:`services.novelty.stage`)
turns outcomes into the scores, alerts, library and duplicates topics' records:
- ``novelty_score = 1 - max cosine similarity`` to the *reference* entries;
- below the threshold (global, or of the nearest cluster) the result is ``known``;
- otherwise, if a *provisional* entry (an earlier novel result) is within the
  threshold, the result is ``provisional`` and points to that entry's alert;
- otherwise it is ``novel``: an alert is raised and (by default) the result joins
  the library as a provisional entry, so a burst of one new kind raises one alert.

Each result is scored against the library (and with the thresholds) of the model that
embedded it: during a model switch the service holds the libraries of every model in
flight (``library_for`` / ``policy_for``), so the old model's results still in the
pipeline are scored by the old library while the new model's go to the new one.

Waiting, not dead-lettering (:class:`~shared.errors.DependencyUnavailable`: the
runtime retries, then pauses the partitions; nothing is committed):
- while the library is empty (not loaded yet, or never built);
- while no library of the result's model is held: good data of a model being rolled
  out waits for its library (and thresholds) instead of being sent away. The batch is
  checked before anything is scored. Results of a model the operator declared retired
  (``retired_models``) are dead-lettered as ``model_retired`` instead, so leftovers of
  the previous model cannot hold the partitions forever.
A vector that breaks its own model's contract (the library's model but another
dimension, not L2-normalised) is bad input: ``vector_dim`` / ``vector_norm``.

Result ids: a novel result's provisional entry is filed under
``provisional/<result_id>`` (:func:`~shared.index.provisional_entry_id`), never under
a reference entry's id, so neither a colliding id nor a replay of the library's own
data set (results whose ids are reference ids) can demote a reference entry; such a
replay is scored against its own entry (``known``). A result id already stored in the
library or among this replica's pending entries with *other content* is dead-lettered
as ``result_id_reused``: content is compared by the dedupe stage's exact pixel digest
when both sides carry one, else by the vectors (cosine at least
``same_content_similarity``).

Provisional entries this replica adds are visible to the next result at once
(``pending``), before the library topic delivers them back; pending is keyed by entry
id (a retried batch adds nothing twice) and bounded like the library's provisional
entries (``max_provisional``). Alert ids are derived from the result id, and a retried
batch ignores the provisional entries its own later items added on the failed
attempt, so a redelivered result produces the same records.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.contracts import (
    AlertRecord,
    DuplicateRecord,
    EmbeddedResult,
    LibraryEntry,
    Neighbour,
    ScoreRecord,
)
from shared.errors import ContractError, DependencyUnavailable, InputError
from shared.index import LibraryState, provisional_entry_id, vector_digest
from shared.index.policy import ThresholdPolicy

Confirm = Callable[[EmbeddedResult, np.ndarray, list[Neighbour]], DuplicateRecord | None]
"""Hybrid duplicate confirmation hook: the duplicate it confirmed, or None to score as usual."""

LibraryFor = Callable[[str], LibraryState | None]
"""The library of a model's vectors, or None when none of that model is held."""

PolicyFor = Callable[[str], ThresholdPolicy]
"""The thresholds of a model (DependencyUnavailable while there are none that fit)."""

MAX_PROVISIONAL_DEFAULT = 10_000


@dataclass
class NoveltyConfig:
    k: int = 5
    provisional: bool = True
    alert_neighbours: int = 3
    max_provisional: int = MAX_PROVISIONAL_DEFAULT
    """Bound on this replica's pending entries (the library applies its own, normally the same)."""
    retired_models: frozenset[str] = frozenset()
    """Model versions whose results are dead-lettered (``model_retired``) instead of waiting."""
    same_content_similarity: float = 0.98
    """Without pixel digests on both sides, a stored entry is the same content at least this near."""


@dataclass
class _Pending:
    alert_id: str
    vector: np.ndarray
    exact_hash: str | None
    model_version: str | None = None


@dataclass
class PendingEntries:
    """Provisional entries added here but not yet read back from the library topic.

    Keyed by entry id (adding one again replaces it, so a retry adds nothing twice);
    at most ``max_entries``, the oldest dropped first.
    """

    max_entries: int = MAX_PROVISIONAL_DEFAULT
    entries: dict[str, _Pending] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self.entries

    def add(
        self,
        entry_id: str,
        alert_id: str,
        vector: np.ndarray,
        exact_hash: str | None = None,
        model_version: str | None = None,
    ) -> None:
        self.entries.pop(entry_id, None)
        self.entries[entry_id] = _Pending(alert_id, vector, exact_hash, model_version)
        while len(self.entries) > self.max_entries:
            del self.entries[next(iter(self.entries))]

    def get(self, entry_id: str) -> _Pending | None:
        return self.entries.get(entry_id)

    def forget(self, entry_id: str) -> None:
        self.entries.pop(entry_id, None)

    def best(
        self, vector: np.ndarray, exclude: Collection[str], model_version: str | None = None
    ) -> tuple[str, str, float] | None:
        """The nearest entry (of ``model_version``'s, when given: vectors of two models never meet)."""
        ids = [
            entry_id
            for entry_id, pending in self.entries.items()
            if entry_id not in exclude and (model_version is None or pending.model_version == model_version)
        ]
        if not ids:
            return None
        sims = np.stack([self.entries[entry_id].vector for entry_id in ids]) @ vector
        i = int(np.argmax(sims))
        return ids[i], self.entries[ids[i]].alert_id, float(sims[i])


def alert_id_for(result_id: str) -> str:
    return f"alert-{result_id}"


@dataclass(frozen=True)
class Scored:
    """A scored result: its score, and for a novel one its alert and provisional library entry."""

    score: ScoreRecord
    alert: AlertRecord | None = None
    provisional_entry: LibraryEntry | None = None


Verdict = Scored | DuplicateRecord
Outcome = Verdict | InputError


class NoveltyCore:
    """Scores embedded results against the library handed in (see the module docstring)."""

    def __init__(
        self,
        library: Callable[[], LibraryState | None],
        policy: Callable[[], ThresholdPolicy],
        config: NoveltyConfig | None = None,
        confirm: Confirm | None = None,
        *,
        library_for: LibraryFor | None = None,
        policy_for: PolicyFor | None = None,
    ) -> None:
        """``library`` and ``policy``: the one library and its thresholds; with ``library_for`` and
        ``policy_for`` (several models in flight) ``library`` only tells whether any is loaded."""
        self._library = library
        self._policy = policy
        self._library_for = library_for
        self._policy_for = policy_for
        self.config = config or NoveltyConfig()
        self.confirm = confirm
        self.pending = PendingEntries(self.config.max_provisional)

    def _ready_library(self) -> LibraryState:
        library = self._library()
        if library is None:  # not loaded yet, or never built: the result waits, it is not bad input
            raise DependencyUnavailable(
                "the library is empty: waiting for it (build it with lithowatch library build)"
            )
        return library

    def _library_of(self, item: EmbeddedResult) -> LibraryState:
        """The library of the model that embedded ``item``: InputError ``model_retired`` for a
        retired model's, DependencyUnavailable (wait) while no library of the model is held."""
        loaded = self._ready_library()
        if self._library_for is not None:
            library = self._library_for(item.model_version)
        else:
            library = loaded if loaded.model_version == item.model_version else None
        if library is not None:
            return library
        if item.model_version in self.config.retired_models:
            raise InputError(
                f"embedding of model {item.model_version!r}, which is retired "
                f"(LITHOWATCH_NOVELTY_RETIRED_MODELS); the library holds {loaded.model_version!r}",
                reason="model_retired",
            )
        raise DependencyUnavailable(
            f"results of model {item.model_version!r} wait: the library holds model "
            f"{loaded.model_version!r} (publish a library of that model with lithowatch library reembed "
            "and run novelty with its topic and thresholds, or declare the model retired)"
        )

    def _policy_of(self, item: EmbeddedResult) -> ThresholdPolicy:
        return self._policy_for(item.model_version) if self._policy_for is not None else self._policy()

    def _vector(self, item: EmbeddedResult, library: LibraryState) -> np.ndarray:
        if item.embedding.dim != library.dim:  # the library's own model: this vector breaks its contract
            raise ContractError(
                f"embedding of dimension {item.embedding.dim}; model {library.model_version!r} "
                f"(the library's) has {library.dim}",
                reason="vector_dim",
            )
        vector = item.embedding.to_array()
        norm = float(np.linalg.norm(vector))
        if not 0.5 < norm < 1.5:
            raise ContractError(f"embedding is not L2-normalised (norm {norm:.3f})", reason="vector_norm")
        return vector / norm

    def _same_content(
        self,
        item: EmbeddedResult,
        stored_hash: str | None,
        stored_digest: str | None,
        similarity: float | None,
    ) -> bool:
        if stored_hash is not None and item.hashes is not None:
            return stored_hash == item.hashes.exact
        if stored_digest is not None and stored_digest == vector_digest(item.embedding.to_array()):
            return True
        # None: the stored entry is not among the nearest hits, all of them nearer than the bound
        return similarity is None or similarity >= self.config.same_content_similarity

    def _refuse_reused_id(
        self, item: EmbeddedResult, vector: np.ndarray, library: LibraryState, hits: list[Neighbour]
    ) -> None:
        """InputError ``result_id_reused`` if an entry stored under this result's ids holds other content."""
        similarity = {n.id: n.similarity for n in hits}
        weakest = min(similarity.values(), default=-1.0)
        for entry_id in (item.result_id, provisional_entry_id(item.result_id)):
            stored = library.get(entry_id)
            if stored is not None:
                # not among the hits: at most as near as the weakest hit (unknown if that is near enough)
                found = similarity.get(entry_id)
                if found is None and weakest >= self.config.same_content_similarity:
                    near: float | None = None
                else:
                    near = found if found is not None else weakest
                same = self._same_content(item, stored.exact_hash, stored.vector_digest, near)
            elif (local := self.pending.get(entry_id)) is not None:
                same = self._same_content(item, local.exact_hash, None, float(local.vector @ vector))
            else:
                continue
            if not same:
                raise InputError(
                    f"result id {item.result_id!r} is reused: library entry {entry_id!r} holds other content",
                    reason="result_id_reused",
                )

    def score(self, item: EmbeddedResult, ignore: Collection[str] = ()) -> Verdict:
        """The verdict on one result. ``ignore``: provisional entries left out of the comparison
        (those a failed attempt at this batch added for results after this one)."""
        library = self._library_of(item)
        vector = self._vector(item, library)
        own_entry = provisional_entry_id(item.result_id)
        hits = library.neighbours(vector, self.config.k + 2, exclude=ignore)  # + 2: its own entries
        self._refuse_reused_id(item, vector, library, hits)
        # not itself (its own provisional entry, or one filed under its bare id by earlier versions)
        neighbours = [n for n in hits if n.id != own_entry and not (n.provisional and n.id == item.result_id)]
        neighbours = neighbours[: self.config.k]
        if self.confirm is not None:
            duplicate = self.confirm(item, vector, neighbours)
            if duplicate is not None:
                return duplicate
        reference = [n for n in neighbours if not n.provisional]
        provisional = [n for n in neighbours if n.provisional]
        score = 1.0 - (reference[0].similarity if reference else -1.0)
        threshold, cluster = self._policy_of(item).threshold_for(vector)
        decision = "known" if score < threshold else "novel"
        provisional_of: str | None = None
        if decision == "novel":
            candidates = [(n.id, n.alert_id or "", n.similarity) for n in provisional]
            local = self.pending.best(vector, exclude={own_entry, *ignore}, model_version=item.model_version)
            if local is not None:
                candidates.append(local)
            if candidates:
                best = max(candidates, key=lambda c: c[2])
                if 1.0 - best[2] < threshold:
                    decision, provisional_of = "provisional", best[1] or None
        # what the score and the alert both carry of the result and its judgement
        carried: dict[str, Any] = {
            "result_id": item.result_id,
            "novelty_score": score,
            "threshold": threshold,
            "cluster": cluster,
            "model_version": item.model_version,
            "labels": item.labels,
            "job_id": item.job_id,
            "clip_id": item.clip_id,
            "alignment_flagged": item.alignment_flagged,
            "alignment_reason": item.alignment_reason,
            "produced_at": item.produced_at,
        }
        scored = ScoreRecord(
            **carried, decision=decision, neighbours=neighbours, provisional_of=provisional_of
        )
        if decision != "novel":
            return Scored(scored)
        alert_id = alert_id_for(item.result_id)
        alert = AlertRecord(
            **carried,
            alert_id=alert_id,
            neighbours=neighbours[: self.config.alert_neighbours],
            mask=item.mask,
            simulated=item.aligned_simulated,
        )
        if not self.config.provisional:
            return Scored(scored, alert)
        entry = LibraryEntry(
            entry_id=own_entry,
            status="provisional",
            vector=item.embedding,
            model_version=item.model_version,
            labels=item.labels,
            mask=item.mask,
            simulated=item.aligned_simulated,
            alert_id=alert_id,
            hashes=item.hashes,
            nm_per_px=item.nm_per_px,
        )
        exact_hash = item.hashes.exact if item.hashes is not None else None
        self.pending.add(own_entry, alert_id, vector, exact_hash, item.model_version)
        return Scored(scored, alert, entry)

    def process_batch(self, items: Sequence[EmbeddedResult]) -> list[Outcome]:
        """One outcome per result, in order; the whole batch waits (DependencyUnavailable) while the
        library is missing, or no library (or thresholds) of one of its results' models is held."""
        if not items:
            return []
        libraries: dict[str, LibraryState] = {}
        for item in items:  # the batch waits as a whole: check every model before anything is scored
            if item.model_version not in libraries and item.model_version not in self.config.retired_models:
                libraries[item.model_version] = self._library_of(item)
                self._policy_of(item)
        # entries of this batch's results already there: added by a failed attempt at this batch
        # (or an earlier delivery); a result does not see those of the results after it
        earlier_attempt = {
            entry_id: i
            for i, item in enumerate(items)
            if (entry_id := provisional_entry_id(item.result_id)) in self.pending
            or (item.model_version in libraries and entry_id in libraries[item.model_version])
        }
        outcomes: list[Outcome] = []
        for i, item in enumerate(items):
            ignore = {entry_id for entry_id, j in earlier_attempt.items() if j > i}
            try:
                outcomes.append(self.score(item, ignore))
            except InputError as exc:
                outcomes.append(exc)
        return outcomes
