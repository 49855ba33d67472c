"""Novelty stage: kNN cosine against the library, threshold, alerts, and alert-storm control.

For each embedded result (pure logic; the library and thresholds are handed in):
- ``novelty_score = 1 - max cosine similarity`` to the *reference* entries;
- below the threshold (global, or of the nearest cluster) the result is ``known``;
- otherwise, if a *provisional* entry (an earlier novel result) is within the
  threshold, the result is ``provisional`` and points to that entry's alert;
- otherwise it is ``novel``: an alert is raised and (by default) the result joins
  the library as a provisional entry, so a burst of one new kind raises one alert.

Provisional entries this replica adds are visible to the next result at once
(``pending``), before the library topic delivers them back. Alert ids are
derived from the result id, so a redelivered result produces the same records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from shared import metrics
from shared.calibration.policy import ThresholdPolicy
from shared.contracts import (
    AlertRecord,
    EmbeddedResult,
    LibraryEntry,
    Neighbour,
    ScoreRecord,
    Topics,
)
from shared.errors import ContractError, DependencyUnavailable, InputError
from shared.index import LibraryState
from shared.runtime import ItemResult, Output

Confirm = Callable[[EmbeddedResult, np.ndarray, list[Neighbour]], Output | None]
"""Hybrid duplicate confirmation hook: a duplicates-topic output, or None to score as usual."""


@dataclass
class NoveltyConfig:
    k: int = 5
    provisional: bool = True
    alert_neighbours: int = 3


@dataclass
class PendingEntries:
    """Provisional entries added here but not yet read back from the library topic."""

    ids: list[str] = field(default_factory=list)
    alert_ids: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)

    def add(self, entry_id: str, alert_id: str, vector: np.ndarray) -> None:
        self.ids.append(entry_id)
        self.alert_ids.append(alert_id)
        self.vectors.append(vector)

    def forget(self, entry_id: str) -> None:
        if entry_id in self.ids:
            i = self.ids.index(entry_id)
            del self.ids[i], self.alert_ids[i], self.vectors[i]

    def best(self, vector: np.ndarray, exclude: str) -> tuple[str, str, float] | None:
        if not self.ids:
            return None
        sims = np.stack(self.vectors) @ vector
        order = np.argsort(-sims)
        for i in order:
            if self.ids[i] != exclude:
                return self.ids[i], self.alert_ids[i], float(sims[i])
        return None


def alert_id_for(result_id: str) -> str:
    return f"alert-{result_id}"


class NoveltyCore:
    name = "novelty"
    input_topic = Topics.EMBEDDED
    input_model = EmbeddedResult

    def __init__(
        self,
        library: Callable[[], LibraryState | None],
        policy: Callable[[], ThresholdPolicy],
        config: NoveltyConfig | None = None,
        confirm: Confirm | None = None,
    ) -> None:
        self._library = library
        self._policy = policy
        self.config = config or NoveltyConfig()
        self.confirm = confirm
        self.pending = PendingEntries()
        for decision in ("known", "novel", "provisional"):  # export zeros, so ratios exist before events
            metrics.NOVELTY_DECISIONS.labels(decision)

    def _vector(self, item: EmbeddedResult, library: LibraryState) -> np.ndarray:
        if item.model_version != library.model_version:
            raise ContractError(
                f"embedding of model {item.model_version!r}; the library holds {library.model_version!r}",
                reason="model_version",
            )
        if item.embedding.dim != library.dim:
            raise ContractError(
                f"embedding of dimension {item.embedding.dim}; the library holds {library.dim}",
                reason="vector_dim",
            )
        vector = item.embedding.to_array()
        norm = float(np.linalg.norm(vector))
        if not 0.5 < norm < 1.5:
            raise ContractError(f"embedding is not L2-normalised (norm {norm:.3f})", reason="vector_norm")
        return vector / norm

    def score(self, item: EmbeddedResult) -> list[Output]:
        library = self._library()
        if library is None:  # not loaded yet, or never built: the result waits, it is not bad input
            raise DependencyUnavailable(
                "the library is empty: waiting for it (build it with lithowatch library build)"
            )
        vector = self._vector(item, library)
        neighbours = library.neighbours(vector, self.config.k + 1, exclude={item.result_id})[: self.config.k]
        if self.confirm is not None:
            duplicate = self.confirm(item, vector, neighbours)
            if duplicate is not None:
                return [duplicate]
        reference = [n for n in neighbours if not n.provisional]
        provisional = [n for n in neighbours if n.provisional]
        score = 1.0 - (reference[0].similarity if reference else -1.0)
        threshold, cluster = self._policy().threshold_for(vector)
        decision = "known" if score < threshold else "novel"
        provisional_of: str | None = None
        if decision == "novel":
            candidates = [(n.id, n.alert_id or "", n.similarity) for n in provisional]
            local = self.pending.best(vector, exclude=item.result_id)
            if local is not None:
                candidates.append(local)
            if candidates:
                best = max(candidates, key=lambda c: c[2])
                if 1.0 - best[2] < threshold:
                    decision, provisional_of = "provisional", best[1] or None
        outputs = [
            Output(
                Topics.SCORES,
                ScoreRecord(
                    result_id=item.result_id,
                    novelty_score=score,
                    threshold=threshold,
                    decision=decision,
                    cluster=cluster,
                    neighbours=neighbours,
                    provisional_of=provisional_of,
                    model_version=item.model_version,
                    labels=item.labels,
                    produced_at=item.produced_at,
                ),
                item.result_id,
            )
        ]
        metrics.NOVELTY_DECISIONS.labels(decision).inc()
        if decision == "novel":
            alert_id = alert_id_for(item.result_id)
            outputs.append(
                Output(
                    Topics.ALERTS,
                    AlertRecord(
                        alert_id=alert_id,
                        result_id=item.result_id,
                        novelty_score=score,
                        threshold=threshold,
                        cluster=cluster,
                        neighbours=neighbours[: self.config.alert_neighbours],
                        mask=item.mask,
                        simulated=item.aligned_simulated,
                        model_version=item.model_version,
                        labels=item.labels,
                        produced_at=item.produced_at,
                    ),
                    item.result_id,
                )
            )
            metrics.ALERTS.inc()
            if self.config.provisional:
                outputs.append(
                    Output(
                        Topics.LIBRARY,
                        LibraryEntry(
                            entry_id=item.result_id,
                            status="provisional",
                            vector=item.embedding,
                            model_version=item.model_version,
                            labels=item.labels,
                            mask=item.mask,
                            simulated=item.aligned_simulated,
                            alert_id=alert_id,
                            hashes=item.hashes,
                        ),
                        item.result_id,
                    )
                )
                self.pending.add(item.result_id, alert_id, vector)
        return outputs

    def process_batch(self, items: Sequence[EmbeddedResult]) -> list[ItemResult]:
        results: list[ItemResult] = []
        for item in items:
            try:
                results.append(self.score(item))
            except InputError as exc:
                results.append(exc)
        return results
