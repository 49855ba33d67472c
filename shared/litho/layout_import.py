"""Real layouts as data sets: windows of a cell library placed in rows, each under process variants.

:func:`cell_library_samples` turns the cells of a library (see :mod:`shared.litho.cell_rows`)
into simulated results: for each mask layer (a *family*, e.g. ``li1`` routing or ``mcon``
contacts) the cells are abutted into rows, windows are tiled over the rows, and each
window (a *group*: one layout) is simulated under ``variants`` process conditions:

- variant 0: nominal (no shift, dose to size, best focus, no bias);
- variant 1: defocused (``±defocus_nm``), when there are at least 3 variants;
- variant 2: a mask defect of a type the window offers a site for, when ``defects``
  is on and there are at least 3 variants (skipped quietly where no site is found);
- the others, and variants 1 and 2 besides their own change: the window shifted by up to
  ``max_shift_nm`` each way, the dose within ``±dose_range``, the mask biased within
  ``±bias_nm``.

The dose is set *to size* per layer unless given: the dose at which the printed area of
sample windows equals their drawn area, as a process engineer sets it (a contact layer
needs a far higher dose than a dense routing layer under one resist threshold).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from shared.errors import ConfigError
from shared.litho.cell_rows import Placement, RowWindow, cell_kind, placed_layout, row_windows
from shared.litho.defects import NoDefectSite, applicable_defects, inject_defect
from shared.litho.farm import ClipSample, LabelValue, defect_severity, simulate_clip
from shared.litho.geometry import Layout, rasterize
from shared.litho.simulator import LithoSimulator

MIN_DEFECT_AREA_PX = 12.0
DOSE_SAMPLE_WINDOWS = 24


@dataclass(frozen=True)
class VariantPlan:
    """How the windows of a cell library are varied (see the module docstring)."""

    variants: int = 6
    max_shift_nm: float = 24.0
    dose_range: float = 0.03
    bias_nm: float = 2.0
    defocus_nm: float = 40.0
    defects: bool = True

    def check(self) -> None:
        if self.variants < 1:
            raise ConfigError(f"--variants must be at least 1, got {self.variants}")
        if self.max_shift_nm < 0 or self.bias_nm < 0 or self.defocus_nm < 0:
            raise ConfigError("--max-shift-nm, --bias-nm and --defocus-nm must not be negative")
        if not 0.0 <= self.dose_range < 0.5:
            raise ConfigError(f"--dose-range must lie in [0, 0.5), got {self.dose_range}")


def dose_to_size(
    simulator: LithoSimulator, layout: Layout, windows: Sequence[RowWindow], size_px: int, pad_px: int
) -> float:
    """The dose at which sample windows print as much area as is drawn (median over windows)."""
    nm_per_px = simulator.nm_per_px
    threshold = simulator.resist.threshold
    doses = []
    step = max(1, len(windows) // DOSE_SAMPLE_WINDOWS)
    crop = slice(pad_px, pad_px + size_px)
    for window in list(windows)[::step][:DOSE_SAMPLE_WINDOWS]:
        origin = (window.x_nm - pad_px * nm_per_px, window.y_nm - pad_px * nm_per_px)
        drawn = rasterize(layout, origin, size_px + 2 * pad_px, nm_per_px)
        aerial = simulator.aerial(drawn)[crop, crop]
        fill = float(drawn[crop, crop].mean())
        if fill <= 0.0:
            continue
        level = float(np.quantile(aerial, 1.0 - fill))
        if level > 0:
            doses.append(threshold / level)
    if not doses:
        raise ConfigError(f"layer {layout.params.get('layer')}: no window to set the dose on")
    return round(float(np.median(doses)), 3)


class CellLibraryImport:
    """Simulates the windows of placed cell rows; one instance per (layer, split)."""

    def __init__(
        self,
        simulator: LithoSimulator,
        size_px: int,
        pad_px: int,
        plan: VariantPlan,
        rng: np.random.Generator,
        dose: float | None = None,
    ) -> None:
        plan.check()
        self.simulator = simulator
        self.size_px = size_px
        self.pad_px = pad_px
        self.plan = plan
        self.rng = rng
        self.dose = dose
        self.nm_per_px = simulator.nm_per_px
        self.repeated_windows = 0
        self.shift_px = math.floor(plan.max_shift_nm / self.nm_per_px)

    def _variant(self, index: int) -> tuple[tuple[int, int], float, float, float, bool]:
        """(shift px, dose factor, defocus nm, bias nm, defect?) of variant ``index``."""
        if index == 0:
            return (0, 0), 1.0, 0.0, 0.0, False
        s = self.shift_px
        shift = (int(self.rng.integers(-s, s + 1)), int(self.rng.integers(-s, s + 1)))
        dose = 1.0 + float(self.rng.uniform(-1.0, 1.0)) * self.plan.dose_range
        bias = round(float(self.rng.uniform(-1.0, 1.0)) * self.plan.bias_nm * 2.0) / 2.0
        many = self.plan.variants >= 3
        defocus = float(self.rng.choice([-1.0, 1.0])) * self.plan.defocus_nm if index == 1 and many else 0.0
        return shift, dose, defocus, bias, index == 2 and many and self.plan.defects

    def samples(
        self, placements: Sequence[Placement], family: str, layer: str, split: str, window_nm: float,
        id_prefix: str,
    ) -> Iterator[ClipSample]:
        """Every window of the rows under every variant, in window order."""
        layout = placed_layout(placements, layer, family)
        windows = list(row_windows(placements, layout, window_nm))
        if not windows:
            raise ConfigError(f"layer {layer}: no window holds enough drawn area")
        base_dose = self.dose or dose_to_size(self.simulator, layout, windows, self.size_px, self.pad_px)
        seen: set[bytes] = set()
        for w_index, window in enumerate(windows):
            drawn = rasterize(layout, (window.x_nm, window.y_nm), self.size_px, self.nm_per_px)
            key = hashlib.sha256(np.round(drawn * 64).astype(np.uint8).tobytes()).digest()
            if key in seen:  # the same pattern drawn again (a repeated cell or an empty stretch of rail)
                self.repeated_windows += 1
                continue
            seen.add(key)
            labels: dict[str, LabelValue] = {
                "family": family,
                "cell": window.centre_cell,
                "cell_kind": cell_kind(window.centre_cell),
                "cells": "+".join(window.cells),
                "split": split,
                "layer": layer,
            }
            origin = (window.x_nm, window.y_nm)
            yield from self.window_variants(layout, origin, f"{id_prefix}-w{w_index:05d}", base_dose, labels)

    def window_variants(
        self, layout: Layout, origin_nm: tuple[float, float], group: str, base_dose: float,
        labels: dict[str, LabelValue],
    ) -> Iterator[ClipSample]:
        """The window at ``origin_nm`` under every variant of the plan; one ``group``."""
        for v in range(self.plan.variants):
            shift, dose_factor, defocus, bias, defect = self._variant(v)
            origin = (origin_nm[0] + shift[0] * self.nm_per_px, origin_nm[1] + shift[1] * self.nm_per_px)
            dose = base_dose * dose_factor
            row: dict[str, LabelValue] = {
                **labels,
                "group": group,
                "variant": v,
                "window_x_nm": round(origin_nm[0], 3),
                "window_y_nm": round(origin_nm[1], 3),
                "shift_x_px": shift[0],
                "shift_y_px": shift[1],
                "base_dose": base_dose,
                "dose": round(dose, 4),
                "defocus_nm": defocus,
                "bias_nm": bias,
                "defect": "none",
                "severity": 0.0,
                "severity_unit": "nm2",
            }
            pair = self._defective(layout, origin, dose, defocus, bias, row) if defect else None
            if pair is None:
                pair = self._simulate(layout, origin, dose, defocus, bias)
            yield ClipSample(f"{group}-v{v}", pair[0], pair[1], self.nm_per_px, row)

    def _simulate(
        self, layout: Layout, origin: tuple[float, float], dose: float, defocus: float, bias: float
    ) -> tuple[np.ndarray, np.ndarray]:
        return simulate_clip(self.simulator, layout, origin, self.size_px, self.pad_px, dose, defocus, bias)

    def _defective(
        self, layout: Layout, origin: tuple[float, float], dose: float, defocus: float, bias: float,
        labels: dict[str, LabelValue],
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Mask and print with the strongest defect found (labels updated), or None without a site."""
        span = self.size_px * self.nm_per_px
        window = (origin[0], origin[1], origin[0] + span, origin[1] + span)
        options = applicable_defects(layout, window, self.rng)
        if not options:
            return None
        defect = str(self.rng.choice(options))
        _, clean = self._simulate(layout, origin, dose, defocus, bias)
        best: tuple[float, np.ndarray, np.ndarray, dict[str, LabelValue]] | None = None
        for strength in range(4):
            try:
                injection = inject_defect(layout, defect, window, self.rng, strength)
            except NoDefectSite:
                break
            d = dose * injection.dose_factor
            clean_at = (
                clean
                if injection.dose_factor == 1.0
                else self._simulate(layout, origin, d, defocus, bias)[1]
            )
            mask, printed = simulate_clip(
                self.simulator, injection.layout, origin, self.size_px, self.pad_px, d, defocus, bias
            )
            area, epe = defect_severity(clean_at, printed, self.nm_per_px)
            extra: dict[str, LabelValue] = {
                "defect": defect,
                "severity": round(area, 1),
                "defect_epe_nm": round(epe, 1),
                "defect_strength": strength,
                "dose": round(d, 4),
            }
            if best is None or area > best[0]:
                best = (area, mask, printed, extra)
            if area >= MIN_DEFECT_AREA_PX * self.nm_per_px**2:
                break
        if best is None:
            return None
        labels.update(best[3])
        return best[1], best[2]
