"""The novelty stage as the runtime sees it: the core's verdicts, the library feed and thresholds.

A scored result goes to the scores topic; a novel one also raises an alert and (with
provisional entries on) adds its provisional entry to the library topic of the model that
embedded it (``library_topic``), keyed by entry id (the topic is compacted by it); a
confirmed duplicate goes to the duplicates topic.
Every result decided here also gets its verdict on the verdicts topic (``scored``, or
``duplicate`` for a confirmed duplicate), with the farm's ids and the alignment flag.
Decisions and alerts are counted; every score and nearest-neighbour similarity goes into a
histogram, and into the drift watch (:mod:`services.novelty.drift`) when one is given, whose
readings become ``lithowatch_novelty_drift``.

Between batches (:meth:`NoveltyStage.tick`) the library feed applies what the library
topic has delivered and the thresholds file is looked at for changes; at the end
(:meth:`NoveltyStage.close`) the feed writes its snapshot and closes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from services.novelty import NAME
from services.novelty.core import NoveltyCore, Outcome, Scored, Verdict
from services.novelty.drift import STATISTICS, ScoreDrift
from shared import metrics
from shared.contracts import DuplicateRecord, EmbeddedResult, Topics
from shared.errors import InputError
from shared.stage import ItemResult, Output, StageBase
from shared.verdicts import duplicate_verdict, scored_verdict

DECISIONS = ("known", "novel", "provisional")


class LibrarySource(Protocol):
    """The library feed as the stage drives it."""

    def poll(self, timeout_ms: int = 0) -> int: ...

    def close(self) -> None: ...


class ThresholdsSource(Protocol):
    """The thresholds watcher as the stage drives it."""

    def check(self) -> None: ...


class NoveltyStage(StageBase):
    name = NAME
    input_topic = Topics.EMBEDDED
    input_model = EmbeddedResult

    def __init__(
        self,
        core: NoveltyCore,
        library: LibrarySource | None = None,
        thresholds: ThresholdsSource | None = None,
        library_topic: Callable[[str], str] | None = None,
        drift: ScoreDrift | None = None,
    ) -> None:
        """``library_topic``: the library topic of a model (default: the one library topic)."""
        self.core = core
        self.library = library
        self.thresholds = thresholds
        self.drift = drift
        self.library_topic = library_topic or (lambda _model_version: Topics.LIBRARY)
        for decision in DECISIONS:  # export zeros, so ratios exist before events
            metrics.NOVELTY_DECISIONS.labels(decision)
        for method in ("embedding+hash", "embedding+descriptors"):
            metrics.DUPLICATES.labels(method)

    def process_batch(self, items: Sequence[EmbeddedResult]) -> list[ItemResult]:
        outcomes = self.core.process_batch(items)
        self.observe_scores(outcomes)
        return [
            outcome if isinstance(outcome, InputError) else self.outputs(outcome, item)
            for item, outcome in zip(items, outcomes, strict=True)
        ]

    def observe_scores(self, outcomes: Sequence[Outcome]) -> None:
        """Scores and nearest similarities into their histograms and the drift watch, which is
        read once per batch (a retried batch is observed again; a drift reading barely moves)."""
        for outcome in outcomes:
            if not isinstance(outcome, Scored):
                continue
            score = outcome.score
            metrics.NOVELTY_SCORE.labels(score.model_version).observe(score.novelty_score)
            if score.neighbours:
                nearest = score.neighbours[0].similarity
                metrics.NEIGHBOUR_SIMILARITY.labels(score.model_version).observe(nearest)
            if self.drift is not None:
                self.drift.observe(score.model_version, score.novelty_score)
        if self.drift is not None:
            export_drift(self.drift)

    def outputs(self, verdict: Verdict, item: EmbeddedResult) -> list[Output]:
        """The records of one verdict (``item``: the result it was reached for), counted."""
        if isinstance(verdict, DuplicateRecord):  # confirmed by the hybrid path
            metrics.DUPLICATES.labels(verdict.method).inc()
            final = duplicate_verdict(verdict, item)
            return [
                Output(Topics.DUPLICATES, verdict, verdict.result_id),
                Output(Topics.VERDICTS, final, final.result_id),
            ]
        score = verdict.score
        outputs = [Output(Topics.SCORES, score, score.result_id)]
        metrics.NOVELTY_DECISIONS.labels(score.decision).inc()
        if verdict.alert is not None:
            outputs.append(Output(Topics.ALERTS, verdict.alert, score.result_id))
            metrics.ALERTS.inc()
        alert_id = verdict.alert.alert_id if verdict.alert is not None else None
        if verdict.provisional_entry is not None:
            entry = verdict.provisional_entry
            outputs.append(Output(self.library_topic(entry.model_version), entry, entry.entry_id))
        outputs.append(Output(Topics.VERDICTS, scored_verdict(score, NAME, alert_id), score.result_id))
        return outputs

    def tick(self) -> None:
        """Apply what the library topic delivered, reload changed thresholds (never blocks)."""
        if self.library is not None:
            self.library.poll(timeout_ms=0)
        if self.thresholds is not None:
            self.thresholds.check()

    def close(self) -> None:
        if self.library is not None:
            self.library.close()


# the (model_version, statistic) series of lithowatch_novelty_drift this process has set
_DRIFT_SERIES: set[tuple[str, str]] = set()


def export_drift(drift: ScoreDrift) -> None:
    """The drift watch's readings as ``lithowatch_novelty_drift``: one series per model and
    statistic while it has a reading, none otherwise (no full window, no reference, gone)."""
    readings = drift.readings()
    for labels in sorted(_DRIFT_SERIES):
        if readings.get(labels[0]) is None:
            metrics.NOVELTY_DRIFT.remove(*labels)
            _DRIFT_SERIES.discard(labels)
    for model_version, reading in readings.items():
        if reading is not None:
            for statistic in STATISTICS:
                metrics.NOVELTY_DRIFT.labels(model_version, statistic).set(reading.statistic(statistic))
                _DRIFT_SERIES.add((model_version, statistic))
