"""Contact sheet: every layout family and every defect type, mask beside print.

Left half: one row per family (drawn mask, aerial image, resist print). Right
half: one row per defect type (defective mask with the defect boxed, clean
print, defective print). Meant for a person to judge whether the physics looks
right: rounded corners, pulled-back line ends, contacts as round blobs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from shared.errors import ContractError
from toolkit.litho.defects import DEFECT_FAMILIES, DEFECT_TYPES
from toolkit.litho.families import FAMILIES
from toolkit.litho.farm import ClipSample, FarmGenerator, Variant


def _number(value: object) -> float:
    if not isinstance(value, int | float):
        raise ContractError(f"expected a numeric label, got {value!r}")
    return float(value)


def _defect_sample(farm: FarmGenerator, defect: str) -> tuple[ClipSample, np.ndarray]:
    """A defective sample and the clean print of the same layout at the same dose."""
    for _ in range(20):
        for family in DEFECT_FAMILIES[defect]:
            layout = farm.new_layout(family)
            try:
                sample = farm.render(layout, farm.group_id(layout), Variant(), defect=defect)
            except ContractError:
                continue
            dose = _number(sample.labels["dose"])
            _, clean = farm.simulate_window(layout, Variant(dose=dose), dose)
            return sample, clean
    raise ContractError(f"no layout offered a site for {defect}")


def _show(ax: plt.Axes, image: np.ndarray, title: str, cmap: str = "gray", vmax: float = 1.0) -> None:
    ax.imshow(image, cmap=cmap, vmin=0.0, vmax=vmax, origin="lower", interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def make_contact_sheet(
    out_path: str | Path, seed: int = 0, size_px: int = 256, nm_per_px: float = 4.0
) -> Path:
    """Render the sheet to ``out_path`` (PNG) and return the path."""
    farm = FarmGenerator(seed=seed, size_px=size_px, nm_per_px=nm_per_px)
    rows = max(len(FAMILIES), len(DEFECT_TYPES))
    fig, axes = plt.subplots(rows, 6, figsize=(13.0, 2.2 * rows))
    clip_nm = size_px * nm_per_px
    for r, family in enumerate(FAMILIES):
        layout = farm.new_layout(family)
        sample = farm.render(layout, farm.group_id(layout))
        aerial = farm.simulator.aerial(sample.mask)
        label = ", ".join(f"{k}={v}" for k, v in list(layout.params.items())[:2])
        _show(axes[r, 0], sample.mask, f"{family} mask ({clip_nm:.0f} nm)\n{label}")
        _show(axes[r, 1], aerial, f"aerial (max {aerial.max():.2f})", cmap="magma", vmax=1.2)
        _show(axes[r, 2], sample.simulated, "print")
    for r, defect in enumerate(DEFECT_TYPES):
        sample, clean = _defect_sample(farm, defect)
        lab = sample.labels
        _show(axes[r, 3], sample.mask, f"{defect} in {lab['family']}\nmask (dose {lab['dose']})")
        x, y = _number(lab["defect_x_px"]), _number(lab["defect_y_px"])
        for col in (3, 5):
            axes[r, col].add_patch(Rectangle((x - 20, y - 20), 40, 40, fill=False, edgecolor="red", lw=1.0))
        _show(axes[r, 4], clean, "clean print")
        severity = f"{lab['severity']} nm2, EPE {lab['defect_epe_nm']} nm"
        _show(axes[r, 5], sample.simulated, f"defect print: {severity}")
    for r in range(len(FAMILIES), rows):
        for c in range(3):
            axes[r, c].axis("off")
    fig.suptitle(
        "lithowatch farm emulator: 193 nm, NA 1.35, annular 0.6/0.8; 1 = opening / printed", fontsize=9
    )
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
