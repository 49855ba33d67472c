"""Rendering of explanation panels: the result beside its nearest known neighbours."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from shared.imaging import to_uint8

TILE_PX = 192
HEADER_PX = 46
FOOTER_PX = 58
GAP_PX = 6
NOVEL_BGR = (40, 40, 220)
KNOWN_BGR = (60, 150, 60)


@dataclass(frozen=True)
class Tile:
    """One image of the panel with its caption lines."""

    image: np.ndarray | None
    title: str
    lines: Sequence[str] = ()
    accent: tuple[int, int, int] = (90, 90, 90)
    points: np.ndarray | None = field(default=None)  # (N, 2) keypoints in image pixels, drawn as dots


def _tile(tile: Tile) -> np.ndarray:
    canvas = np.full((HEADER_PX + TILE_PX + FOOTER_PX, TILE_PX, 3), 255, np.uint8)
    if tile.image is not None:
        small = cv2.resize(to_uint8(tile.image), (TILE_PX, TILE_PX), interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
        if tile.points is not None and len(tile.points):
            sx = TILE_PX / tile.image.shape[1]
            sy = TILE_PX / tile.image.shape[0]
            for x, y in np.asarray(tile.points, dtype=np.float64):
                cv2.circle(rgb, (int(x * sx), int(y * sy)), 3, (0, 160, 255), 1, cv2.LINE_AA)
        canvas[HEADER_PX : HEADER_PX + TILE_PX] = rgb
    else:
        cv2.putText(
            canvas,
            "no image",
            (50, HEADER_PX + TILE_PX // 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (120, 120, 120),
            1,
            cv2.LINE_AA,
        )
    cv2.rectangle(canvas, (0, HEADER_PX), (TILE_PX - 1, HEADER_PX + TILE_PX - 1), tile.accent, 2)
    cv2.putText(canvas, tile.title[:26], (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.48, tile.accent, 1, cv2.LINE_AA)
    for i, line in enumerate(tile.lines[:4]):
        y = 36 if i == 0 else HEADER_PX + TILE_PX + 14 + 14 * (i - 1)
        cv2.putText(canvas, line[:30], (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (40, 40, 40), 1, cv2.LINE_AA)
    return canvas


def render_panel(tiles: Sequence[Tile], title: str) -> np.ndarray:
    """A BGR uint8 panel: a title bar over the tiles laid out in one row."""
    rendered = [_tile(t) for t in tiles]
    gap = np.full((rendered[0].shape[0], GAP_PX, 3), 255, np.uint8)
    pieces = [rendered[0]]
    for tile in rendered[1:]:
        pieces += [gap, tile]
    row = np.hstack(pieces)
    bar = np.full((30, row.shape[1], 3), 245, np.uint8)
    cv2.putText(bar, title[:110], (6, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (20, 20, 20), 1, cv2.LINE_AA)
    return np.vstack([bar, row])


def encode_panel_png(panel: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", panel)
    if not ok:
        raise ValueError("panel PNG encoding failed")
    return bytes(buffer.tobytes())


def label_line(labels: dict[str, object], keys: Sequence[str] = ("family", "defect", "group")) -> list[str]:
    lines = []
    for key in keys:
        value = labels.get(key)
        if value not in (None, "", "none"):
            lines.append(f"{key}: {value}")
    return lines
