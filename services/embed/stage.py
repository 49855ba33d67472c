"""The embed stage as the runtime sees it: decode a micro-batch, embed it, attach vectors.

Each message's ``nm_per_px`` goes with its images; a clip the encoder cannot take
(bad image, or a scale it cannot be resampled from) is rejected on its own, so it
is dead-lettered with its reason while the rest of the batch flows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from services.embed import NAME
from services.embed.core import EmbedCore
from shared import metrics
from shared.contracts import AlignedResult, EmbeddedResult, ImageRef, Topics, Vector
from shared.errors import InputError
from shared.stage import ItemResult, Output, StageBase


class EmbedStage(StageBase):
    name = NAME
    input_topic = Topics.ALIGNED
    input_model = AlignedResult

    def __init__(self, core: EmbedCore, load: Callable[[ImageRef], np.ndarray]) -> None:
        self.core = core
        self.load = load
        self._rate_window_start = time.monotonic()
        self._rate_window_items = 0
        metrics.EMBED_DEVICE.labels(str(core.encoder.device)).set(1)

    def process_batch(self, items: Sequence[AlignedResult]) -> list[ItemResult]:
        results: list[ItemResult | None] = [None] * len(items)
        pairs: list[tuple[np.ndarray, np.ndarray]] = []
        scales: list[float] = []
        positions: list[int] = []
        for i, item in enumerate(items):
            try:
                mask = self.load(item.mask)
                aligned = self.load(item.aligned_simulated)
                self.core.validate_item(mask, aligned, item.nm_per_px)
            except InputError as exc:
                results[i] = exc
                continue
            pairs.append((mask, aligned))
            scales.append(item.nm_per_px)
            positions.append(i)
        vectors = self.core.embed_batch(pairs, scales)
        for row, i in enumerate(positions):
            item = items[i]
            embedded = EmbeddedResult(
                **item.model_dump(exclude={"schema_version"}),
                embedding=Vector.from_array(vectors[row]),
                model_version=self.core.model_version,
            )
            results[i] = [Output(Topics.EMBEDDED, embedded, item.result_id)]
        self._update_rate(len(pairs))
        return [r if r is not None else InputError("not processed") for r in results]

    def _update_rate(self, count: int) -> None:
        self._rate_window_items += count
        elapsed = time.monotonic() - self._rate_window_start
        if elapsed >= 2.0:
            metrics.EMBED_RATE.set(self._rate_window_items / elapsed)
            metrics.EMBED_BUSY.set(self.core.take_busy_ratio())
            self._rate_window_start = time.monotonic()
            self._rate_window_items = 0
