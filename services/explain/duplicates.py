"""Panels of confirmed duplicates: the result beside the library entry it re-simulates.

The novelty stage's hybrid confirmation (``embedding+hash`` / ``embedding+descriptors``)
records the matched keypoints (``points_result`` / ``points_library``, in image
pixels) or the registration shift in the record's details; they are drawn on the
masks so a reader sees *why* the two were called the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.explain.render import KNOWN_BGR, Tile, label_line, render_panel

DUPLICATE_BGR = (200, 120, 30)
HYBRID_METHODS = ("embedding+hash", "embedding+descriptors")


def _points(value: Any) -> np.ndarray | None:
    """An (N, 2) float array from a details list of [x, y] pairs (None when absent or malformed)."""
    if not isinstance(value, list) or not value:
        return None
    try:
        points = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return points if points.ndim == 2 and points.shape[1] == 2 and np.isfinite(points).all() else None


def duplicate_tiles(
    result_id: str,
    duplicate_of: str,
    method: str,
    details: dict[str, Any],
    result_images: tuple[np.ndarray | None, np.ndarray | None],
    library_images: tuple[np.ndarray | None, np.ndarray | None],
    labels: dict[str, Any] | None = None,
) -> list[Tile]:
    """Four tiles: result mask (+ keypoints), result print, library mask (+ keypoints), library print."""
    similarity = details.get("similarity")
    shift = details.get("shift_px")
    evidence = (
        f"inliers {details.get('inliers', 0)}"
        if method == "embedding+descriptors"
        else f"hash bits {details.get('mask_hash_bits', 0)}/{details.get('print_hash_bits', 0)}"
    )
    head = [f"sim {similarity:.4f}" if isinstance(similarity, float) else method, evidence]
    if isinstance(shift, list) and len(shift) == 2:
        head.append(f"shift {shift[0]:+d},{shift[1]:+d} px")
    return [
        Tile(result_images[0], "result mask", [result_id[:30], *head],
             DUPLICATE_BGR, _points(details.get("points_result"))),
        Tile(result_images[1], "result print", [method, *label_line(labels or {})], DUPLICATE_BGR),
        Tile(library_images[0], "library mask", [duplicate_of[:30]], KNOWN_BGR,
             _points(details.get("points_library"))),
        Tile(library_images[1], "library print", [duplicate_of[:30]], KNOWN_BGR),
    ]


def render_duplicate_panel(tiles: list[Tile], result_id: str, duplicate_of: str, method: str) -> np.ndarray:
    return render_panel(tiles, f"duplicate {result_id} of {duplicate_of} ({method})")
