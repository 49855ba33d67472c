"""Reading user layouts: ``.glp`` clips (ICCAD-2013 contest style) and GDSII/OASIS through gdstk.

``.glp`` is ASCII: ``EQUIV 1 1000 MICRON`` sets 1 unit = 1 nm; ``RECT N M1 x y w h``
(lower-left corner, width, height) and ``PGON N M1 x1 y1 x2 y2 ...`` (Manhattan
vertices, the first not repeated) draw shapes on layer ``M1``; every other line
(``BEGIN``, ``CNAME``, ``CELL``, ``ENDMSG``...) is a header. Polygons are split
into rectangles by a scanline, so rasterization stays exact.

Every reader returns a :class:`Layout` translated so its bounding box starts at
(0, 0); the original offset is kept in ``params``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shared.errors import ConfigError
from toolkit.litho.geometry import Layout, manhattan_polygon_to_rects, rasterize

GDS_SUFFIXES = (".gds", ".gds2", ".gdsii", ".oas", ".oasis")


def _numbers(tokens: list[str], where: str) -> list[float]:
    try:
        return [float(t) for t in tokens]
    except ValueError as exc:
        raise ConfigError(f"{where}: expected numbers, got {' '.join(tokens)!r}") from exc


def _translated(rects: np.ndarray, family: str, params: dict[str, float | int | str]) -> Layout:
    if len(rects) == 0:
        raise ConfigError(f"{params.get('source', 'layout')}: no shapes on the selected layer")
    lo = rects[:, :2].min(axis=0)
    moved = rects - np.concatenate([lo, lo])
    extent = float(max(moved[:, 2].max(), moved[:, 3].max()))
    return Layout(moved, extent, family, {**params, "offset_x_nm": float(lo[0]), "offset_y_nm": float(lo[1])})


def parse_glp(text: str, source: str = "<glp>", layer: str | None = None) -> Layout:
    """Parse ``.glp`` text; ``layer`` (e.g. ``M1``) keeps only that layer's shapes."""
    nm_per_unit = 1.0
    rects: list[np.ndarray] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split()
        if not tokens:
            continue
        keyword = tokens[0].upper()
        where = f"{source}:{line_no}"
        if keyword == "EQUIV":
            values = _numbers(tokens[1:3], where) if len(tokens) >= 4 else []
            if len(values) != 2 or values[0] <= 0 or values[1] <= 0 or tokens[3].upper() != "MICRON":
                raise ConfigError(f"{where}: expected 'EQUIV <a> <b> MICRON', got {raw.strip()!r}")
            nm_per_unit = 1000.0 * values[0] / values[1]
        elif keyword in ("RECT", "PGON"):
            if len(tokens) < 3:
                raise ConfigError(f"{where}: {keyword} needs a type, a layer and coordinates")
            if layer is not None and tokens[2] != layer:
                continue
            coords = _numbers(tokens[3:], where)
            if keyword == "RECT":
                if len(coords) != 4:
                    raise ConfigError(f"{where}: RECT needs x y w h, got {len(coords)} numbers")
                x, y, w, h = (c * nm_per_unit for c in coords)
                if w <= 0 or h <= 0:
                    raise ConfigError(f"{where}: RECT width and height must be positive")
                rects.append(np.array([[x, y, x + w, y + h]]))
            else:
                if len(coords) < 8 or len(coords) % 2:
                    raise ConfigError(
                        f"{where}: PGON needs at least 4 vertices as x y pairs, got {len(coords)} numbers"
                    )
                try:
                    rects.append(manhattan_polygon_to_rects(np.asarray(coords).reshape(-1, 2) * nm_per_unit))
                except ConfigError as exc:
                    raise ConfigError(f"{where}: {exc}") from exc
    merged = np.vstack(rects) if rects else np.zeros((0, 4))
    return _translated(merged, "imported", {"source": source, "layer": layer or "all"})


def read_glp(path: str | Path, layer: str | None = None) -> Layout:
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read as ASCII ({exc})") from exc
    return parse_glp(text, source=path.name, layer=layer)


def _parse_gds_layer(layer: str | None) -> tuple[int | None, int | None]:
    if layer is None:
        return None, None
    parts = layer.split("/")
    try:
        numbers = [int(p) for p in parts]
    except ValueError as exc:
        raise ConfigError(f"GDS layer must be 'L' or 'L/D' (integers), got {layer!r}") from exc
    if len(numbers) == 1:
        return numbers[0], None
    if len(numbers) == 2:
        return numbers[0], numbers[1]
    raise ConfigError(f"GDS layer must be 'L' or 'L/D', got {layer!r}")


def read_gds(path: str | Path, layer: str | None = None, cell: str | None = None) -> Layout:
    """All shapes (flattened) of the top cell (or ``cell``) on ``layer`` (``L`` or ``L/D``)."""
    import gdstk

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        lib = (
            gdstk.read_oas(str(path))
            if path.suffix.lower() in (".oas", ".oasis")
            else gdstk.read_gds(str(path))
        )
    except (RuntimeError, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read layout ({exc})") from exc
    if cell is not None:
        cells = [c for c in lib.cells if c.name == cell and isinstance(c, gdstk.Cell)]
        if not cells:
            raise ConfigError(f"{path}: no cell named {cell!r}")
    else:
        cells = [c for c in lib.top_level() if isinstance(c, gdstk.Cell)]
        if len(cells) != 1:
            names = ", ".join(sorted(c.name for c in cells))
            raise ConfigError(f"{path}: {len(cells)} top cells ({names}); choose one with --cell")
    nm_per_unit = float(lib.unit) / 1e-9
    lay, dt = _parse_gds_layer(layer)
    polygons = [
        p
        for p in cells[0].get_polygons()
        if (lay is None or p.layer == lay) and (dt is None or p.datatype == dt)
    ]
    rects = []
    for i, poly in enumerate(polygons):
        try:
            rects.append(manhattan_polygon_to_rects(np.asarray(poly.points) * nm_per_unit))
        except ConfigError as exc:
            raise ConfigError(f"{path}: polygon {i} on layer {poly.layer}/{poly.datatype}: {exc}") from exc
    merged = np.vstack(rects) if rects else np.zeros((0, 4))
    return _translated(
        merged, "imported", {"source": path.name, "layer": layer or "all", "cell": cells[0].name}
    )


def read_layout(path: str | Path, layer: str | None = None) -> Layout:
    """Dispatch on the suffix: ``.glp`` or a GDSII/OASIS file."""
    suffix = Path(path).suffix.lower()
    if suffix == ".glp":
        return read_glp(path, layer)
    if suffix in GDS_SUFFIXES:
        return read_gds(path, layer)
    raise ConfigError(f"{path}: unknown layout format {suffix!r} (expected .glp, .gds or .oas)")


def layout_windows(layout: Layout, window_nm: float) -> Iterator[tuple[float, float]]:
    """Lower-left corners of windows tiling the layout's bounding box (centred), skipping empty ones."""
    if not window_nm > 0:
        raise ConfigError(f"window size must be positive, got {window_nm}")
    rects = layout.rects
    x_hi, y_hi = float(rects[:, 2].max()), float(rects[:, 3].max())
    nx, ny = max(1, math.ceil(x_hi / window_nm)), max(1, math.ceil(y_hi / window_nm))
    x_start = (x_hi - nx * window_nm) / 2.0
    y_start = (y_hi - ny * window_nm) / 2.0
    for j in range(ny):
        for i in range(nx):
            x0, y0 = x_start + i * window_nm, y_start + j * window_nm
            inside = (
                (rects[:, 0] < x0 + window_nm)
                & (rects[:, 2] > x0)
                & (rects[:, 1] < y0 + window_nm)
                & (rects[:, 3] > y0)
            )
            if inside.any():
                yield (x0, y0)


def window_mask(
    layout: Layout, origin_nm: tuple[float, float], window_nm: float, nm_per_px: float
) -> np.ndarray:
    """The drawn mask of one window (size ``window_nm / nm_per_px`` pixels)."""
    size = window_nm / nm_per_px
    if abs(size - round(size)) > 1e-6:
        raise ConfigError(f"window {window_nm} nm is not a whole number of {nm_per_px} nm pixels")
    return rasterize(layout, origin_nm, round(size), nm_per_px)


def scaled(layout: Layout, shrink: float) -> Layout:
    """``layout`` with every coordinate multiplied by ``shrink`` (offsets too); 1 returns it as it is."""
    if not 0.0 < shrink <= 1.0:
        raise ConfigError(f"--shrink must lie in (0, 1], got {shrink}")
    if shrink == 1.0:
        return layout
    params = dict(layout.params)
    for key in ("offset_x_nm", "offset_y_nm"):
        if key in params:
            params[key] = float(params[key]) * shrink
    params["shrink"] = shrink
    return Layout(layout.rects * shrink, layout.extent_nm * shrink, layout.family, params)
