"""The align stage's pure core: register each unique result's print onto its mask frame.

A result whose registration falls below the quality floor is never passed on
silently: by policy (``on_failure``) it comes out flagged (``alignment_flagged``
with the reason), or rejected (``alignment_failed``: the runtime dead-letters it).
Per item the outcome is an :class:`AlignedResult` or the :class:`InputError` that
rejects it; the stage adapter (:mod:`services.align.stage`) routes and counts them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Literal

import numpy as np

from shared.blobstore import BlobStore
from shared.contracts import AlignedResult, ImageRef, Transform, UniqueResult
from shared.errors import ImageError, InputError
from shared.imageref import make_image_ref
from shared.registration import Aligner, AlignSettings

FailurePolicy = Literal["flag", "dlq"]
Outcome = AlignedResult | InputError


class AlignCore:
    """Registration of (mask, print) pairs with one :class:`Aligner`."""

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
        """The result with its print warped onto the mask frame; InputError for bad or refused input."""
        mask = self.load(result.mask)
        simulated = self.load(result.simulated)
        if mask.shape != simulated.shape:
            raise ImageError(
                f"mask {mask.shape} and print {simulated.shape} differ in shape", reason="shape_mismatch"
            )
        registration = self.aligner.register(mask, simulated)
        if not registration.ok and self.on_failure == "dlq":
            raise InputError(f"cannot align: {registration.reason}", reason="alignment_failed")
        if registration.ok:
            warped = self.aligner.warp(simulated, registration)
            transform = registration.as_transform()
        else:
            # a refused registration's best guess may be a period off (gratings, cell rows): warping by
            # it would make the print look new to the embedder, so the print stays as delivered
            warped = self.aligner.warp(simulated, replace(registration, matrix=np.eye(3)))
            method = f"{registration.method}:refused"
            transform = Transform.identity(method=method, quality=registration.quality)
        aligned = make_image_ref(warped, "png", self.store, self.inline_limit_bytes)
        return AlignedResult(
            **result.model_dump(exclude={"schema_version"}),
            aligned_simulated=aligned,
            transform=transform,
            alignment_flagged=not registration.ok,
            alignment_reason=registration.reason,
        )

    def process_batch(self, items: Sequence[UniqueResult]) -> list[Outcome]:
        """One outcome per result, in order."""
        outcomes: list[Outcome] = []
        for item in items:
            try:
                outcomes.append(self.align(item))
            except InputError as exc:
                outcomes.append(exc)
        return outcomes
