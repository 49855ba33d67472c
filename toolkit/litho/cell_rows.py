"""Standard-cell libraries as real layouts: cells read from GDSII, placed in rows, cut into windows.

A standard-cell library (one GDSII file per cell, e.g. SkyWater SKY130 ``sky130_fd_sc_hd``)
is what real routing and contact layers are made of. A window of a single cell never
shows what a chip shows: neighbours abutting, shared power rails, cell boundaries.
So cells are placed side by side in rows as a placer abuts them (every other row
mirrored about its rail, so the rails of two rows coincide), and windows are tiled
over the rows.

- :func:`read_cell` reads one cell: its boundary (``prBoundary``, layer ``236/0`` in
  SKY130; the bounding box when absent) and its rectangles on each chosen layer.
- :func:`split_kinds` puts whole cell *kinds* (a function at every drive strength:
  ``nand2_1`` and ``nand2_4`` are one kind) on the training or the evaluation side,
  so no layout seen in training reappears, even resized, in evaluation.
- :func:`place_rows` abuts cells into rows of a target width.
- :func:`row_windows` tiles the placed rows with windows and says which cells each shows.

Coordinates are nm after the ``shrink`` factor, which maps the 130 nm library onto
the scale the optics model (features near the 193 nm immersion resolution limit).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import ConfigError
from toolkit.litho.geometry import Layout, manhattan_polygon_to_rects
from toolkit.litho.layout_io import _parse_gds_layer

BOUNDARY_LAYER = "236/0"
SKY130_HD_DIR = Path(__file__).resolve().parent / "cells" / "sky130_fd_sc_hd"  # shipped, Apache-2.0
_DRIVE_SUFFIX = re.compile(r"_\d+$")


def cell_kind(name: str) -> str:
    """``sky130_fd_sc_hd__nand2_4`` -> ``nand2``: the library prefix and the drive strength dropped."""
    base = name.split("__", 1)[-1]
    return _DRIVE_SUFFIX.sub("", base) or base


@dataclass(frozen=True)
class LayerSpec:
    """A named mask layer: ``name=L/D`` on the command line (e.g. ``li1=67/20``)."""

    name: str
    layer: int
    datatype: int | None

    @classmethod
    def parse(cls, text: str) -> LayerSpec:
        name, sep, number = text.partition("=")
        if not sep:
            name, number = text.replace("/", "_"), text
        name = name.strip()
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"layer name {name!r}: use letters, digits, '_', '.', '-' (as in li1=67/20)")
        layer, datatype = _parse_gds_layer(number.strip())
        if layer is None:
            raise ConfigError(f"layer {text!r}: expected NAME=L/D, e.g. li1=67/20")
        return cls(name, layer, datatype)

    def matches(self, layer: int, datatype: int) -> bool:
        return layer == self.layer and (self.datatype is None or datatype == self.datatype)


@dataclass(frozen=True)
class Cell:
    """One library cell: size and rectangles (nm, after shrink, boundary corner at 0, 0) per layer."""

    name: str
    width_nm: float
    height_nm: float
    rects: dict[str, np.ndarray]

    @property
    def kind(self) -> str:
        return cell_kind(self.name)


def read_cell(path: str | Path, layers: Sequence[LayerSpec], shrink: float = 1.0) -> Cell:
    """The top cell of a GDSII/OASIS file, flattened, on ``layers``; ``ConfigError`` names what is wrong."""
    import gdstk

    if not 0.0 < shrink <= 1.0:
        raise ConfigError(f"--shrink must lie in (0, 1], got {shrink}")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        oasis = path.suffix.lower() in (".oas", ".oasis")
        lib = gdstk.read_oas(str(path)) if oasis else gdstk.read_gds(str(path))
    except (RuntimeError, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read layout ({exc})") from exc
    tops = [c for c in lib.top_level() if isinstance(c, gdstk.Cell)]
    if len(tops) != 1:
        raise ConfigError(f"{path}: {len(tops)} top cells; a cell library holds one cell per file")
    cell = tops[0]
    scale = float(lib.unit) / 1e-9 * shrink
    polygons = cell.get_polygons()
    b_layer, b_type = _parse_gds_layer(BOUNDARY_LAYER)
    boundary = [p for p in polygons if p.layer == b_layer and p.datatype == b_type]
    if boundary:
        (x0, y0), (x1, y1) = boundary[0].bounding_box()
    else:
        box = cell.bounding_box()
        if box is None:
            raise ConfigError(f"{path}: the cell {cell.name} is empty")
        (x0, y0), (x1, y1) = box
    origin = np.array([x0, y0, x0, y0]) * scale
    rects: dict[str, np.ndarray] = {}
    for spec in layers:
        parts = []
        for i, poly in enumerate(p for p in polygons if spec.matches(p.layer, p.datatype)):
            try:
                parts.append(manhattan_polygon_to_rects(np.asarray(poly.points) * scale))
            except ConfigError as exc:
                raise ConfigError(f"{path}: polygon {i} on {spec.name}: {exc}") from exc
        rects[spec.name] = (np.vstack(parts) - origin) if parts else np.zeros((0, 4))
    return Cell(cell.name, float(x1 - x0) * scale, float(y1 - y0) * scale, rects)


def split_kinds(cells: Sequence[Cell], eval_share: float, seed: int) -> tuple[list[Cell], list[Cell]]:
    """Training and evaluation cells; every drive strength of a kind goes to one side."""
    if not 0.0 <= eval_share < 1.0:
        raise ConfigError(f"--eval-share must lie in [0, 1), got {eval_share}")
    kinds = sorted({c.kind for c in cells})
    rng = np.random.default_rng(seed)
    n_eval = round(eval_share * len(kinds))
    if eval_share > 0 and len(kinds) >= 2:
        n_eval = min(max(n_eval, 1), len(kinds) - 1)
    held = {kinds[i] for i in rng.permutation(len(kinds))[:n_eval]}
    return [c for c in cells if c.kind not in held], [c for c in cells if c.kind in held]


def row_cells(cells: Sequence[Cell]) -> tuple[list[Cell], list[Cell]]:
    """Cells of the library's row height (the commonest) and the others (spacers, special cells)."""
    if not cells:
        return [], []
    heights = [round(c.height_nm, 3) for c in cells]
    common = max(set(heights), key=heights.count)
    return (
        [c for c, h in zip(cells, heights, strict=True) if h == common],
        [c for c, h in zip(cells, heights, strict=True) if h != common],
    )


@dataclass(frozen=True)
class Placement:
    cell: Cell
    x_nm: float
    y_nm: float
    mirrored: bool  # flipped about the horizontal axis (odd rows share the rail of the row below)


def place_rows(
    cells: Sequence[Cell], row_width_nm: float, rng: np.random.Generator, copies: int = 1
) -> list[Placement]:
    """Each cell ``copies`` times in random order, abutted into rows of about ``row_width_nm``."""
    if not cells:
        raise ConfigError("no cells to place")
    if copies < 1:
        raise ConfigError(f"--copies must be at least 1, got {copies}")
    heights = {round(c.height_nm, 3) for c in cells}
    if len(heights) != 1:
        raise ConfigError(f"cells of different heights ({sorted(heights)} nm) cannot share rows")
    row_height = cells[0].height_nm
    order = [cells[i] for _ in range(copies) for i in rng.permutation(len(cells))]
    placements: list[Placement] = []
    row, x = 0, 0.0
    for cell in order:
        if x > 0 and x + cell.width_nm > row_width_nm:
            row, x = row + 1, 0.0
        placements.append(Placement(cell, x, row * row_height, mirrored=row % 2 == 1))
        x += cell.width_nm
    return placements


def placed_layout(placements: Sequence[Placement], layer: str, family: str) -> Layout:
    """The rectangles of ``layer`` of every placed cell, in row coordinates."""
    parts = []
    for p in placements:
        rects = p.cell.rects[layer]
        if len(rects) == 0:
            continue
        if p.mirrored:
            h = p.cell.height_nm
            rects = np.stack([rects[:, 0], h - rects[:, 3], rects[:, 2], h - rects[:, 1]], axis=1)
        parts.append(rects + np.array([p.x_nm, p.y_nm, p.x_nm, p.y_nm]))
    if not parts:
        raise ConfigError(f"no cell has shapes on layer {layer}")
    rects = np.vstack(parts)
    extent = float(max(rects[:, 2].max(), rects[:, 3].max()))
    return Layout(rects, extent, family, {"layer": layer})


@dataclass(frozen=True)
class RowWindow:
    """A window (lower-left corner, nm) and the cells it shows, the one at its centre first."""

    x_nm: float
    y_nm: float
    centre_cell: str
    cells: tuple[str, ...]


def _cells_in(placements: Sequence[Placement], box: tuple[float, float, float, float]) -> list[Placement]:
    x0, y0, x1, y1 = box
    return [
        p
        for p in placements
        if p.x_nm < x1 and p.x_nm + p.cell.width_nm > x0 and p.y_nm < y1 and p.y_nm + p.cell.height_nm > y0
    ]


def row_windows(
    placements: Sequence[Placement], layout: Layout, window_nm: float, min_fill: float = 0.02
) -> Iterator[RowWindow]:
    """Windows along each row, centred on it (so each shows the cells between two rails, and the
    rails at its edges when the window is at least a row high), side by side without overlap;
    windows whose drawn area is under ``min_fill`` of the window are skipped."""
    if not window_nm > 0:
        raise ConfigError(f"window size must be positive, got {window_nm}")
    row_height = placements[0].cell.height_nm
    rows: dict[float, float] = {}
    for p in placements:
        rows[p.y_nm] = max(rows.get(p.y_nm, 0.0), p.x_nm + p.cell.width_nm)
    rects = layout.rects
    for row_y in sorted(rows):
        y0 = row_y + (row_height - window_nm) / 2.0
        for i in range(max(1, math.floor(rows[row_y] / window_nm))):
            x0 = i * window_nm
            x1, y1 = x0 + window_nm, y0 + window_nm
            clipped = np.clip(rects, [x0, y0, x0, y0], [x1, y1, x1, y1])
            sizes = np.clip(clipped[:, 2:] - clipped[:, :2], 0.0, None)
            area = float((sizes[:, 0] * sizes[:, 1]).sum())  # overlaps counted twice: a fill estimate
            if area < min_fill * window_nm * window_nm:
                continue
            shown = _cells_in(placements, (x0, y0, x1, y1))
            cx, cy = x0 + window_nm / 2, y0 + window_nm / 2
            centre = _cells_in(placements, (cx, cy, cx + 1e-6, cy + 1e-6))
            names = [p.cell.name for p in shown]
            first = centre[0].cell.name if centre else names[0]
            yield RowWindow(x0, y0, first, (first, *sorted(set(names) - {first})))
