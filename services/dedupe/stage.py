"""The dedupe stage as the runtime sees it: unique results onward, duplicates aside.

A duplicate is the end of its result's path: besides the duplicates topic it gets its
``duplicate`` verdict on the verdicts topic (of which result, exact or perceptual), with
the farm's ids and labels. A duplicate that shows an earlier result, kept as unique when it
came, to be a window of the same layout (two re-simulations moved opposite ways, both before
their original) brings that result's *late* duplicate record and verdict too
(``details.late``), produced with its own outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.dedupe import NAME
from services.dedupe.core import DedupeCore, LateDuplicate
from shared import metrics
from shared.contracts import DuplicateRecord, SimResult, Topics
from shared.errors import InputError
from shared.stage import ItemResult, Output, StageBase
from shared.verdicts import duplicate_verdict, late_duplicate_verdict


class DedupeStage(StageBase):
    name = NAME
    input_topic = Topics.RESULTS
    input_model = SimResult

    def __init__(self, core: DedupeCore) -> None:
        self.core = core

    def process_batch(self, items: Sequence[SimResult]) -> list[ItemResult]:
        results: list[ItemResult] = []
        for item, decision in zip(items, self.core.decide_batch(items), strict=True):
            outcome = decision.outcome
            if isinstance(outcome, InputError):
                results.append(outcome)
            elif isinstance(outcome, DuplicateRecord):
                metrics.DUPLICATES.labels(outcome.method).inc()
                metrics.MESSAGES.labels(self.name, "duplicate").inc()
                verdict = duplicate_verdict(outcome, item)
                results.append([
                    Output(Topics.DUPLICATES, outcome, outcome.result_id),
                    Output(Topics.VERDICTS, verdict, verdict.result_id),
                    *self._late_outputs(decision.late),
                ])
            else:
                metrics.MESSAGES.labels(self.name, "unique").inc()
                results.append([Output(Topics.UNIQUE, outcome, outcome.result_id)])
        return results

    @staticmethod
    def _late_outputs(late: Sequence[LateDuplicate]) -> list[Output]:
        """Each late duplicate's record and its new verdict (the latest per result is the truth)."""
        outputs: list[Output] = []
        for found in late:
            metrics.DUPLICATES.labels("late").inc()
            verdict = late_duplicate_verdict(found.record, found.job_id, found.clip_id)
            outputs += [Output(Topics.DUPLICATES, found.record, found.record.result_id),
                        Output(Topics.VERDICTS, verdict, verdict.result_id)]
        return outputs
