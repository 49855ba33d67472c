"""The farm emulator's pure core: turn generated or replayed clips into results.

A stream mixes three kinds of results, in proportions the operator chooses:
- new layouts of the farm's (known) families;
- re-simulations of a layout already streamed, with the clip window moved and a
  slightly different dose (what dedupe must catch); labelled ``resim_of``;
- layouts of held-out ("novel") families.
The print may be delivered misregistered against its mask (a random subpixel
translation, up to ``print_offset_px``), as real farms do: the print is simulated
on a window moved by (dx, dy), so print pixel (x, y) shows mask pixel
(x + dx, y + dy); the offset is labelled ``print_to_mask_d{x,y}_px``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shared.blobstore import BlobStore
from shared.contracts import LabelValue, SimResult
from shared.dataset import Dataset
from shared.imageref import make_image_ref
from toolkit.litho import FAMILIES, FarmGenerator, Layout, Variant, rasterize


class FarmSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    seed: int = 0
    families: tuple[str, ...] = FAMILIES
    novel_families: tuple[str, ...] = ()
    novel_fraction: float = Field(0.0, ge=0.0, le=1.0)
    duplicate_fraction: float = Field(0.0, ge=0.0, le=1.0)
    duplicate_max_shift_px: int = Field(16, ge=0, le=64)
    print_offset_px: float = Field(0.0, ge=0.0, le=64.0)
    defect_rate: float = Field(0.0, ge=0.0, le=1.0)
    size_px: int = Field(256, ge=32, le=4096)
    nm_per_px: float = Field(4.0, gt=0)
    job_id: str = "simfarm"
    image_format: Literal["png", "npy"] = "png"


class FarmStream:
    """Yields :class:`SimResult` messages; reproducible from the settings' seed."""

    def __init__(
        self, settings: FarmSettings, store: BlobStore | None = None, inline_limit_bytes: int = 96 * 1024
    ):
        self.settings = settings
        self.store = store
        self.inline_limit_bytes = inline_limit_bytes
        self.rng = np.random.default_rng(settings.seed + 1)
        families = tuple(dict.fromkeys((*settings.families, *settings.novel_families)))
        self.farm = FarmGenerator(
            seed=settings.seed,
            size_px=settings.size_px,
            nm_per_px=settings.nm_per_px,
            families=families,
            defect_rate=settings.defect_rate,
        )
        self._streamed: list[tuple[Layout, str, str]] = []  # (layout, group, first result id)
        self._count = 0

    def _to_result(
        self, mask: np.ndarray, simulated: np.ndarray, labels: Mapping[str, object], result_id: str
    ) -> SimResult:
        make = lambda image: make_image_ref(  # noqa: E731  # a local shorthand
            image, self.settings.image_format, self.store, self.inline_limit_bytes
        )
        return SimResult(
            result_id=result_id,
            job_id=self.settings.job_id,
            clip_id=str(labels.get("group", "")),
            nm_per_px=self.settings.nm_per_px,
            mask=make(mask),
            simulated=make(simulated),
            labels={k: v for k, v in labels.items() if isinstance(v, str | int | float | bool) or v is None},
            produced_at=datetime.now(UTC),
        )

    def _render(
        self, layout: Layout, group: str, variant: Variant
    ) -> tuple[np.ndarray, np.ndarray, dict[str, LabelValue]]:
        """Mask and print of one window; with a print offset, the print is simulated on a moved window."""
        offset = self.settings.print_offset_px
        if offset <= 0:
            sample = self.farm.render(layout, group, variant)
            return sample.mask, sample.simulated, dict(sample.labels)
        dx, dy = (round(float(v), 3) for v in self.rng.uniform(-offset, offset, size=2))
        moved = Variant(
            shift_px=(variant.shift_px[0] + dx, variant.shift_px[1] + dy),  # type: ignore[arg-type]
            dose=variant.dose,
            defocus_nm=variant.defocus_nm,
            bias_nm=variant.bias_nm,
        )
        sample = self.farm.render(layout, group, moved)
        x0, y0, _, _ = self.farm.window_nm(variant.shift_px)
        mask = rasterize(layout, (x0, y0), self.settings.size_px, self.settings.nm_per_px)
        labels = {
            **sample.labels,
            "shift_x_px": variant.shift_px[0],
            "shift_y_px": variant.shift_px[1],
            "print_to_mask_dx_px": dx,
            "print_to_mask_dy_px": dy,
        }
        return mask, sample.simulated, labels

    def next_result(self) -> SimResult:
        s = self.settings
        self._count += 1
        result_id = f"{s.job_id}-{self._count:07d}-{uuid.uuid4().hex[:6]}"
        draw = self.rng.random()
        if self._streamed and draw < s.duplicate_fraction:
            layout, group, first_id = self._streamed[int(self.rng.integers(len(self._streamed)))]
            shift = self.rng.integers(-s.duplicate_max_shift_px, s.duplicate_max_shift_px + 1, size=2)
            variant = Variant(
                shift_px=(int(shift[0]), int(shift[1])), dose=round(float(self.rng.uniform(0.97, 1.03)), 3)
            )
            mask, simulated, labels = self._render(layout, group, variant)
            return self._to_result(
                mask, simulated, {**labels, "resim_of": first_id, "novel": False}, result_id
            )
        novel = bool(s.novel_families) and self.rng.random() < s.novel_fraction
        pool: Sequence[str] = s.novel_families if novel else s.families
        layout = self.farm.new_layout(str(self.rng.choice(list(pool))))
        group = self.farm.group_id(layout)
        mask, simulated, labels = self._render(layout, group, Variant())
        self._streamed.append((layout, group, result_id))
        if len(self._streamed) > 10_000:
            self._streamed.pop(0)
        return self._to_result(mask, simulated, {**labels, "novel": novel}, result_id)

    def __iter__(self) -> Iterator[SimResult]:
        while True:
            yield self.next_result()


def replay(
    dataset: Dataset,
    job_id: str = "replay",
    store: BlobStore | None = None,
    inline_limit_bytes: int = 96 * 1024,
) -> Iterator[SimResult]:
    """Results from a data set on disk, in manifest order; result ids are the item ids."""
    for item in dataset:
        mask, simulated = item.load_mask(), item.load_simulated()
        fmt: Literal["png", "npy"] = "npy" if item.mask_path.suffix == ".npy" else "png"
        yield SimResult(
            result_id=item.id,
            job_id=job_id,
            clip_id=str(item.labels.get("group", item.id)),
            nm_per_px=item.nm_per_px,
            mask=make_image_ref(mask, fmt, store, inline_limit_bytes),
            simulated=make_image_ref(simulated, fmt, store, inline_limit_bytes),
            labels=dict(item.labels),
            produced_at=datetime.now(UTC),
        )
