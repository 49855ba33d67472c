"""The explain stage as the runtime sees it: explanations onward, explained alerts to the pages."""

from __future__ import annotations

from collections.abc import Sequence

from services.explain import NAME
from services.explain.core import ExplainCore
from services.explain.routes import AlertPages, RecentAlert
from shared.contracts import AlertRecord, Topics
from shared.errors import InputError
from shared.stage import ItemResult, Output, StageBase


class ExplainStage(StageBase):
    name = NAME
    input_topic = Topics.ALERTS
    input_model = AlertRecord

    def __init__(self, core: ExplainCore, pages: AlertPages | None = None) -> None:
        self.core = core
        self.pages = pages

    def process_batch(self, items: Sequence[AlertRecord]) -> list[ItemResult]:
        results: list[ItemResult] = []
        for alert, outcome in zip(items, self.core.process_batch(items), strict=True):
            if isinstance(outcome, InputError):
                results.append(outcome)
                continue
            if self.pages is not None and outcome.panel.uri is not None:
                self.pages.remember(RecentAlert(alert, outcome.panel.uri))
            results.append([Output(Topics.EXPLANATIONS, outcome, alert.result_id)])
        return results
