"""A pass-through stage run as its own process by the runtime tests.

It decodes both images of each result (bad images go to the DLQ) and copies the
result to the test output topic. A result whose id starts with ``fatal-`` ends the
process at once, as an out-of-memory kill or a native crash would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from shared.contracts import SimResult, Topics
from shared.errors import InputError
from shared.imageref import ImageLoader
from shared.runtime import StageRunner
from shared.settings import StageSettings, load_settings
from shared.stage import ItemResult, Output, StageBase

OUTPUT_TOPIC = "lithowatch.test-passthrough.v1"


class PassThrough(StageBase):
    name = "passthrough"
    input_topic = Topics.RESULTS
    input_model = SimResult

    def __init__(self) -> None:
        self.load = ImageLoader()

    def process_batch(self, items: Sequence[SimResult]) -> list[ItemResult]:
        results: list[ItemResult] = []
        for item in items:
            if item.result_id.startswith("fatal-"):
                os._exit(70)
            try:
                self.load(item.mask)
                self.load(item.simulated)
            except InputError as exc:
                results.append(exc)
                continue
            results.append([Output(OUTPUT_TOPIC, item, item.result_id)])
        return results


def main() -> int:
    settings = load_settings(StageSettings)
    return StageRunner(PassThrough(), settings).run()


if __name__ == "__main__":
    sys.exit(main())
