"""Small synthetic layouts, farm-like variants and data sets for the model tests (no network)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from shared.dataset import DatasetWriter

CLIP_PX = 48


def layout_canvas(rng: np.random.Generator, extent_px: int = 96) -> np.ndarray:
    """A few random rectangles on a canvas larger than a clip."""
    canvas = np.zeros((extent_px, extent_px), dtype=np.float32)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.integers(0, extent_px - 12, size=2)
        w, h = rng.integers(4, 24, size=2)
        canvas[y0 : y0 + h, x0 : x0 + w] = 1.0
    return canvas


def variant_window(
    canvas: np.ndarray, rng: np.random.Generator, size_px: int = CLIP_PX
) -> tuple[np.ndarray, np.ndarray]:
    """A shifted window of the layout and a blurred, re-thresholded stand-in print."""
    base = (canvas.shape[0] - size_px) // 2
    dx, dy = rng.integers(-4, 5, size=2)
    mask = np.ascontiguousarray(canvas[base + dy : base + dy + size_px, base + dx : base + dx + size_px])
    blurred = cv2.GaussianBlur(mask, (0, 0), sigmaX=float(rng.uniform(1.0, 2.0)))
    printed = (1.0 / (1.0 + np.exp(-(blurred - rng.uniform(0.4, 0.6)) / 0.05))).astype(np.float32)
    return mask, printed


def make_dataset(root: Path, n_groups: int = 12, variants: int = 4, seed: int = 0) -> Path:
    """``n_groups`` layouts of three families, ``variants`` each; the first variant has a defect label."""
    rng = np.random.default_rng(seed)
    families = ("lines", "blocks", "dots")
    with DatasetWriter(root) as writer:
        for g in range(n_groups):
            canvas = layout_canvas(rng)
            for v in range(variants):
                mask, printed = variant_window(canvas, rng)
                labels = {"group": f"g{g}", "family": families[g % 3], "defect": "none" if v else "bridge"}
                writer.add(f"g{g}-v{v}", mask, printed, 4.0, labels)
    return root


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and do not fight other work for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
