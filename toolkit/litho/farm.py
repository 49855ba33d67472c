"""A simulated lithography farm: random layouts rendered as (mask, print) clips with labels.

A result is one clip window of a layout, simulated under a :class:`Variant`
(window shift, dose, defocus, mask bias). Variants of one layout share a
``group`` label; the same layout under another shift (and maybe a slightly
different dose) is a re-simulated duplicate.

The simulation window is the clip plus a margin of real layout context
(~400 nm, a few times the optical ambit), so the periodic FFT wraps only
distant content into the clip (measured effect on the print: under 0.1 px at
the clip border); the print is cropped back to the clip. The ``mask`` image of a sample
is the drawn mask (defects included, bias excluded: bias is a mask-making
variation like dose is an exposure one).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import scipy.fft

from shared.errors import ConfigError, ContractError
from toolkit.litho.defects import NoDefectSite, applicable_defects, inject_defect
from toolkit.litho.families import FAMILIES, generate_layout
from toolkit.litho.geometry import Layout, bias_rects, rasterize
from toolkit.litho.simulator import LithoSimulator

LabelValue = str | int | float | bool | None
CONTEXT_NM = 400.0
SHIFT_ROOM_PX = 64
MIN_SEVERITY_PX = 12.0
MAX_STRENGTH = 3
DEFOCUS_CHOICES_NM = (-60.0, -40.0, -20.0, 0.0, 0.0, 0.0, 20.0, 40.0, 60.0)


@dataclass(frozen=True)
class Variant:
    """How one result of a layout was produced: window shift, dose, focus, mask bias."""

    shift_px: tuple[int, int] = (0, 0)
    dose: float = 1.0
    defocus_nm: float = 0.0
    bias_nm: float = 0.0


@dataclass(frozen=True)
class ClipSample:
    """One simulated result: drawn mask and resist print, float32 ``(size, size)`` in [0, 1]."""

    id: str
    mask: np.ndarray
    simulated: np.ndarray
    nm_per_px: float
    labels: dict[str, LabelValue] = field(default_factory=dict)


def _fast_even_size(size_px: int, pad_px: int) -> int:
    n = size_px + 2 * pad_px
    while scipy.fft.next_fast_len(n) != n:
        n += 2
    return n


def defect_severity(clean: np.ndarray, defective: np.ndarray, nm_per_px: float) -> tuple[float, float]:
    """Printed area changed (nm^2) and worst edge displacement (nm) between two prints."""
    diff = np.abs(defective.astype(np.float64) - clean.astype(np.float64))
    area_nm2 = float(diff.sum()) * nm_per_px * nm_per_px
    changed = diff > 0.5
    if not changed.any():
        return area_nm2, 0.0
    printed = (clean > 0.5).astype(np.uint8)
    to_print = cv2.distanceTransform(1 - printed, cv2.DIST_L2, 5)  # distance of empty pixels to the print
    to_empty = cv2.distanceTransform(printed, cv2.DIST_L2, 5)
    dist = np.where(printed > 0, to_empty, to_print)
    return area_nm2, float(dist[changed].max()) * nm_per_px


def context_pad_px(size_px: int, nm_per_px: float, context_nm: float = CONTEXT_NM) -> int:
    """Margin (px) around a clip so the padded simulation window is an even, FFT-friendly size."""
    return (_fast_even_size(size_px, math.ceil(context_nm / nm_per_px)) - size_px) // 2


def simulate_clip(
    simulator: LithoSimulator,
    layout: Layout,
    origin_nm: tuple[float, float],
    size_px: int,
    pad_px: int,
    dose: float = 1.0,
    defocus_nm: float = 0.0,
    bias_nm: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Drawn mask and print of the window at ``origin_nm``, simulated with ``pad_px`` of layout context."""
    nm_per_px = simulator.nm_per_px
    pad_nm = pad_px * nm_per_px
    origin = (origin_nm[0] - pad_nm, origin_nm[1] - pad_nm)
    sim_px = size_px + 2 * pad_px
    crop = slice(pad_px, pad_px + size_px)
    drawn = rasterize(layout, origin, sim_px, nm_per_px)
    exposed = (
        drawn if bias_nm == 0 else rasterize(bias_rects(layout.rects, bias_nm), origin, sim_px, nm_per_px)
    )
    printed = simulator.printed(exposed, dose=dose, defocus_nm=defocus_nm)
    return drawn[crop, crop].copy(), printed[crop, crop].copy()


class FarmGenerator:
    """Random layouts and their simulated results, reproducible from ``seed``."""

    def __init__(
        self,
        seed: int = 0,
        size_px: int = 256,
        nm_per_px: float = 4.0,
        families: Sequence[str] = FAMILIES,
        defect_rate: float = 0.0,
        simulator: LithoSimulator | None = None,
        context_nm: float = CONTEXT_NM,
    ) -> None:
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or not families:
            raise ConfigError(f"unknown or no layout families {unknown} (known: {', '.join(FAMILIES)})")
        if not 0.0 <= defect_rate <= 1.0:
            raise ConfigError(f"defect_rate must lie in [0, 1], got {defect_rate}")
        self.simulator = simulator or LithoSimulator(size_px, nm_per_px)
        if not math.isclose(self.simulator.nm_per_px, nm_per_px):
            raise ConfigError("the simulator's nm_per_px differs from the farm's")
        self.seed = seed
        self.size_px = size_px
        self.nm_per_px = float(nm_per_px)
        self.families = tuple(families)
        self.defect_rate = defect_rate
        self.rng = np.random.default_rng(seed)
        self.clip_nm = size_px * self.nm_per_px
        self.pad_px = context_pad_px(size_px, self.nm_per_px, context_nm)
        self.sim_px = size_px + 2 * self.pad_px
        # Room for the simulation context plus window shifts of up to SHIFT_ROOM_PX either way.
        self.extent_nm = max(2048.0, (self.sim_px + 2 * SHIFT_ROOM_PX) * self.nm_per_px)
        self._variant_counts: dict[str, int] = {}

    def new_layout(self, family: str | None = None) -> Layout:
        """The next random layout (of ``family``, or of a random one of the farm's families)."""
        chosen = family if family is not None else str(self.rng.choice(self.families))
        return generate_layout(chosen, self.rng, self.extent_nm)

    @staticmethod
    def group_id(layout: Layout) -> str:
        """A content-derived id for a layout (stable across runs)."""
        digest = hashlib.sha256(layout.family.encode() + layout.rects.tobytes()).hexdigest()[:12]
        return f"{layout.family}-{digest}"

    def window_nm(self, shift_px: tuple[int, int]) -> tuple[float, float, float, float]:
        """The clip window (x0, y0, x1, y1) in nm for a shift in pixels (x, y)."""
        base = (self.extent_nm - self.clip_nm) / 2.0
        x0 = base + shift_px[0] * self.nm_per_px
        y0 = base + shift_px[1] * self.nm_per_px
        pad_nm = self.pad_px * self.nm_per_px
        if min(x0, y0) - pad_nm < 0 or max(x0, y0) + self.clip_nm + pad_nm > self.extent_nm:
            raise ContractError(f"shift {shift_px} px moves the window off the layout canvas")
        return (x0, y0, x0 + self.clip_nm, y0 + self.clip_nm)

    def random_variant(self, max_shift_px: int = 16) -> Variant:
        """A random shift (up to ``max_shift_px``), dose (+-5 %), defocus (20 nm steps) and bias (+-2 nm)."""
        shift = self.rng.integers(-max_shift_px, max_shift_px + 1, size=2)
        return Variant(
            shift_px=(int(shift[0]), int(shift[1])),
            dose=round(float(self.rng.uniform(0.95, 1.05)), 3),
            defocus_nm=float(self.rng.choice(DEFOCUS_CHOICES_NM)),
            bias_nm=round(float(self.rng.uniform(-2.0, 2.0)) * 2.0) / 2.0,
        )

    def simulate_window(self, layout: Layout, variant: Variant, dose: float) -> tuple[np.ndarray, np.ndarray]:
        """Drawn mask and print of the clip window, simulated with layout context around it."""
        x0, y0, _, _ = self.window_nm(variant.shift_px)
        return simulate_clip(
            self.simulator,
            layout,
            (x0, y0),
            self.size_px,
            self.pad_px,
            dose=dose,
            defocus_nm=variant.defocus_nm,
            bias_nm=variant.bias_nm,
        )

    def render(
        self, layout: Layout, group: str, variant: Variant | None = None, defect: str | None = None
    ) -> ClipSample:
        """One result of ``layout``: its clip under ``variant``, with ``defect`` injected if given."""
        variant = variant or Variant()
        index = self._variant_counts.get(group, 0)
        labels: dict[str, LabelValue] = {
            "family": layout.family,
            "group": group,
            "variant": index,
            "shift_x_px": variant.shift_px[0],
            "shift_y_px": variant.shift_px[1],
            "dose": variant.dose,
            "defocus_nm": variant.defocus_nm,
            "bias_nm": variant.bias_nm,
            "defect": "none",
            "severity": 0.0,
            "severity_unit": "nm2",
        }
        labels.update({f"layout_{k}": v for k, v in layout.params.items()})
        if defect is None or defect == "none":
            mask, printed = self.simulate_window(layout, variant, variant.dose)
        else:
            mask, printed = self._render_defect(layout, variant, defect, labels)
        self._variant_counts[group] = index + 1
        return ClipSample(f"{group}-{index:03d}", mask, printed, self.nm_per_px, labels)

    def _render_defect(
        self, layout: Layout, variant: Variant, defect: str, labels: dict[str, LabelValue]
    ) -> tuple[np.ndarray, np.ndarray]:
        window = self.window_nm(variant.shift_px)
        min_area = MIN_SEVERITY_PX * self.nm_per_px**2
        best: tuple[float, float, np.ndarray, np.ndarray, dict[str, LabelValue]] | None = None
        for strength in range(MAX_STRENGTH + 1):
            try:
                injection = inject_defect(layout, defect, window, self.rng, strength)
            except NoDefectSite:
                if best is None:
                    raise
                break  # no site for a stronger edit: keep the strongest one made
            dose = variant.dose * injection.dose_factor
            _, clean = self.simulate_window(layout, variant, dose)
            mask, printed = self.simulate_window(injection.layout, variant, dose)
            area, epe = defect_severity(clean, printed, self.nm_per_px)
            if defect == "sidelobe":  # only what prints at the assist counts, not the dose's proximity change
                area = self._spurious_area(clean, printed, injection.bbox_nm, window)
            cx = 0.5 * (injection.bbox_nm[0] + injection.bbox_nm[2])
            cy = 0.5 * (injection.bbox_nm[1] + injection.bbox_nm[3])
            extra: dict[str, LabelValue] = {
                "defect": defect,
                "severity": round(area, 1),
                "defect_epe_nm": round(epe, 1),
                "defect_strength": strength,
                "dose": round(dose, 4),
                "defect_x_px": round((cx - window[0]) / self.nm_per_px, 1),
                "defect_y_px": round((cy - window[1]) / self.nm_per_px, 1),
                **{f"defect_{k}": v for k, v in injection.params.items()},
            }
            if best is None or area > best[0]:
                best = (area, epe, mask, printed, extra)
            if area >= min_area:
                break
        assert best is not None
        labels.update(best[4])
        return best[2], best[3]

    def _spurious_area(
        self,
        clean: np.ndarray,
        printed: np.ndarray,
        bbox_nm: tuple[float, float, float, float],
        window: tuple[float, float, float, float],
    ) -> float:
        """Printed area (nm^2) near ``bbox_nm`` that the clean print does not have."""
        margin_nm = 16.0
        to_px = [(v - window[i % 2]) / self.nm_per_px for i, v in enumerate(bbox_nm)]
        x0, y0 = (max(0, math.floor(v - margin_nm / self.nm_per_px)) for v in to_px[:2])
        x1, y1 = (min(self.size_px, math.ceil(v + margin_nm / self.nm_per_px)) for v in to_px[2:])
        extra = np.clip(printed[y0:y1, x0:x1] - clean[y0:y1, x0:x1], 0.0, None)
        return float(extra.sum()) * self.nm_per_px**2

    def render_any_defect(
        self, layout: Layout, group: str, variant: Variant, options: Sequence[str]
    ) -> ClipSample:
        """``layout`` with one of the defect types ``options``, or clean (``defect: none``) if none fits.

        The first type is drawn at random; when its (random) site search finds
        nothing in this window, the other types are tried in random order.
        """
        remaining = list(options)
        while remaining:
            defect = remaining.pop(int(self.rng.integers(len(remaining))))
            try:
                return self.render(layout, group, variant, defect)
            except NoDefectSite:
                continue
        return self.render(layout, group, variant, None)

    def samples(
        self, n_layouts: int, variants_per_layout: int = 1, max_shift_px: int = 16
    ) -> Iterator[ClipSample]:
        """``n_layouts`` new layouts, each rendered nominally then under random variants.

        Each result gets a defect with probability ``defect_rate``, of a type the
        layout window offers a site for; a result whose window has no site for
        any type is rendered clean.
        """
        for _ in range(n_layouts):
            layout = self.new_layout()
            group = self.group_id(layout)
            for v in range(variants_per_layout):
                variant = Variant() if v == 0 else self.random_variant(max_shift_px)
                if self.defect_rate > 0 and self.rng.random() < self.defect_rate:
                    options = applicable_defects(layout, self.window_nm(variant.shift_px), self.rng)
                    yield self.render_any_defect(layout, group, variant, options)
                else:
                    yield self.render(layout, group, variant, None)
