"""The align stage as the runtime sees it: aligned (or flagged) results onward, counted."""

from __future__ import annotations

from collections.abc import Sequence

from services.align import NAME
from services.align.core import AlignCore
from shared import metrics
from shared.contracts import Topics, UniqueResult
from shared.errors import InputError
from shared.stage import ItemResult, Output, StageBase


class AlignStage(StageBase):
    name = NAME
    input_topic = Topics.UNIQUE
    input_model = UniqueResult

    def __init__(self, core: AlignCore) -> None:
        self.core = core

    def process_batch(self, items: Sequence[UniqueResult]) -> list[ItemResult]:
        results: list[ItemResult] = []
        for outcome in self.core.process_batch(items):
            if isinstance(outcome, InputError):
                results.append(outcome)
                continue
            metrics.MESSAGES.labels(self.name, "flagged" if outcome.alignment_flagged else "aligned").inc()
            results.append([Output(Topics.ALIGNED, outcome, outcome.result_id)])
        return results
