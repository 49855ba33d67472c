"""Align stage: register each unique result's print onto its mask frame.

A result whose registration falls below the quality floor is never passed on
silently: by policy it goes out flagged (``alignment_flagged`` with the reason),
or to the DLQ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from shared import metrics
from shared.blobstore import BlobStore
from shared.contracts import AlignedResult, ImageRef, Topics, UniqueResult
from shared.errors import ImageError, InputError
from shared.imageref import make_image_ref
from shared.registration import Aligner, AlignSettings
from shared.runtime import ItemResult, Output

FailurePolicy = Literal["flag", "dlq"]


class AlignCore:
    name = "align"
    input_topic = Topics.UNIQUE
    input_model = UniqueResult

    def __init__(
        self,
        load: Callable[[ImageRef], np.ndarray],
        settings: AlignSettings | None = None,
        on_failure: FailurePolicy = "flag",
        store: BlobStore | None = None,
        inline_limit_bytes: int = 96 * 1024,
    ) -> None:
        self.load = load
        self.aligner = Aligner(settings)
        self.on_failure = on_failure
        self.store = store
        self.inline_limit_bytes = inline_limit_bytes

    def align(self, result: UniqueResult) -> AlignedResult:
        mask = self.load(result.mask)
        simulated = self.load(result.simulated)
        if mask.shape != simulated.shape:
            raise ImageError(
                f"mask {mask.shape} and print {simulated.shape} differ in shape", reason="shape_mismatch"
            )
        registration = self.aligner.register(mask, simulated)
        if not registration.ok and self.on_failure == "dlq":
            raise InputError(f"cannot align: {registration.reason}", reason="alignment_failed")
        warped = self.aligner.warp(simulated, registration)
        aligned = make_image_ref(warped, "png", self.store, self.inline_limit_bytes)
        metrics.MESSAGES.labels(self.name, "flagged" if not registration.ok else "aligned").inc()
        return AlignedResult(
            **result.model_dump(exclude={"schema_version"}),
            aligned_simulated=aligned,
            transform=registration.as_transform(),
            alignment_flagged=not registration.ok,
            alignment_reason=registration.reason,
        )

    def process_batch(self, items: Sequence[UniqueResult]) -> list[ItemResult]:
        results: list[ItemResult] = []
        for item in items:
            try:
                results.append([Output(Topics.ALIGNED, self.align(item), item.result_id)])
            except InputError as exc:
                results.append(exc)
        return results
