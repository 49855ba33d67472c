"""Real layouts as data sets: windows of a cell library placed in rows, each under process variants.

:func:`cell_library_samples` turns the cells of a library (see :mod:`toolkit.litho.cell_rows`)
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

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from shared.errors import ConfigError
from toolkit.litho.cell_rows import Placement, RowWindow, cell_kind, placed_layout, row_windows
from toolkit.litho.defects import NoDefectSite, applicable_defects, inject_defect
from toolkit.litho.farm import ClipSample, LabelValue, defect_severity, simulate_clip
from toolkit.litho.geometry import Layout, rasterize
from toolkit.litho.simulator import LithoSimulator

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


class WindowPatterns:
    """The drawn patterns of the windows kept so far, to skip one that repeats another.

    Cells of one library share layout (a scan flip-flop with and without its inverted
    output, one gate at two drive strengths): windows over them can show the same
    pattern at another offset. Such a window is not a new layout, so it must not be a
    second group (nor a "new" layout on the evaluation side of a split). Two windows
    repeat when the normalised cross-correlation of their masks, at the best shift
    within a quarter window, reaches ``min_ncc``. Masks are compared at ``grid_px``.
    """

    def __init__(self, grid_px: int = 64, min_ncc: float = 0.92) -> None:
        self.grid_px = grid_px
        self.min_ncc = min_ncc
        self.max_shift = grid_px // 4
        self._spectra: list[np.ndarray] = []
        self._energy: list[float] = []
        self._fill: list[float] = []

    def _prepare(self, mask: np.ndarray) -> tuple[np.ndarray, float, float]:
        small = cv2.resize(
            mask.astype(np.float32), (self.grid_px, self.grid_px), interpolation=cv2.INTER_AREA
        )
        padded = np.zeros((2 * self.grid_px, 2 * self.grid_px), np.float32)
        padded[: self.grid_px, : self.grid_px] = small
        return np.fft.rfft2(padded), float((small * small).sum()), float(small.mean())

    def best_ncc(self, mask: np.ndarray) -> float:
        """The highest normalised cross-correlation with a kept pattern (0 when none is near)."""
        return self._best_ncc(*self._prepare(mask))

    def _best_ncc(self, spectrum: np.ndarray, energy: float, fill: float) -> float:
        if energy <= 0 or not self._spectra:
            return 0.0
        fills = np.asarray(self._fill)
        near = np.flatnonzero(np.abs(fills - fill) <= 0.25 * max(fill, 1e-6))
        best = 0.0
        s = self.max_shift
        for start in range(0, near.size, 256):
            chunk = near[start : start + 256]
            kept = np.stack([self._spectra[i] for i in chunk])
            corr = np.fft.irfft2(kept * np.conj(spectrum)[None], s=(2 * self.grid_px,) * 2)
            window = np.concatenate([corr[:, : s + 1], corr[:, -s:]], axis=1)
            window = np.concatenate([window[:, :, : s + 1], window[:, :, -s:]], axis=2)
            peaks = window.reshape(len(chunk), -1).max(axis=1)
            norm = np.sqrt(energy * np.asarray([self._energy[i] for i in chunk]))
            best = max(best, float((peaks / np.maximum(norm, 1e-12)).max()))
        return best

    def add(self, mask: np.ndarray) -> bool:
        """Keep ``mask``'s pattern and return True, or False when it repeats a kept one."""
        spectrum, energy, fill = self._prepare(mask)
        if self._best_ncc(spectrum, energy, fill) >= self.min_ncc:
            return False
        self._spectra.append(spectrum)
        self._energy.append(energy)
        self._fill.append(fill)
        return True


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

    @staticmethod
    def windows(
        placements: Sequence[Placement], layer: str, family: str, window_nm: float
    ) -> tuple[Layout, list[RowWindow]]:
        """The layer's layout over the rows and its windows (see :func:`row_windows`)."""
        layout = placed_layout(placements, layer, family)
        windows = list(row_windows(placements, layout, window_nm))
        if not windows:
            raise ConfigError(f"layer {layer}: no window holds enough drawn area")
        return layout, windows

    def samples(
        self,
        layout: Layout,
        windows: Sequence[RowWindow],
        family: str,
        layer: str,
        split: str,
        id_prefix: str,
        patterns: WindowPatterns | None = None,
    ) -> Iterator[ClipSample]:
        """Every window (from :meth:`windows`) under every variant, in window order; with
        ``patterns``, a window whose drawn pattern is already there (up to a shift) is skipped."""
        base_dose = self.dose or dose_to_size(self.simulator, layout, windows, self.size_px, self.pad_px)
        for w_index, window in enumerate(windows):
            drawn = rasterize(layout, (window.x_nm, window.y_nm), self.size_px, self.nm_per_px)
            if patterns is not None and not patterns.add(drawn):
                self.repeated_windows += 1  # a pattern already drawn (a cell sharing another's layout)
                continue
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
        self,
        layout: Layout,
        origin_nm: tuple[float, float],
        group: str,
        base_dose: float,
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
        self,
        layout: Layout,
        origin: tuple[float, float],
        dose: float,
        defocus: float,
        bias: float,
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
                clean if injection.dose_factor == 1.0 else self._simulate(layout, origin, d, defocus, bias)[1]
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
