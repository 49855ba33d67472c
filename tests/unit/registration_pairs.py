"""Stored (mask, print, truth) pairs of the alignment bench's real set (``tests/unit/data``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"


def load_pair(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask and print as float32 [0, 1] (stored as uint16), and the print->mask warp."""
    with np.load(DATA / name, allow_pickle=False) as pair:
        mask = pair["mask"].astype(np.float32) / 65535.0
        printed = pair["printed"].astype(np.float32) / 65535.0
        return mask, printed, np.asarray(pair["truth"], dtype=np.float64)
