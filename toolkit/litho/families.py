"""Random Manhattan layout families (nm), each drawn from continuous random parameters.

Every generator fills the whole canvas, so a clip window anywhere in its centre
sees real neighbours. Dimensions respect a rough 193i single-exposure rule set
(pitch >= ~90 nm, widths and spaces >= ~45 nm) so nominal features print.
The generator parameters are returned as ``Layout.params`` (they become labels).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shared.errors import ConfigError
from toolkit.litho.geometry import LabelScalar, Layout, clean_rects

FAMILIES: tuple[str, ...] = ("grating", "line_ends", "contacts", "shapes", "routing", "sram")

Rects = list[tuple[float, float, float, float]]
Params = dict[str, LabelScalar]


def _r(value: float) -> float:
    return round(float(value), 1)


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    """Uniform in [low, high], or ``low`` when the range is empty."""
    return float(rng.uniform(low, high)) if high > low else low


def _transpose(rects: Rects) -> Rects:
    return [(y0, x0, y1, x1) for x0, y0, x1, y1 in rects]


def _grating(rng: np.random.Generator, extent: float) -> tuple[Rects, Params]:
    """Parallel lines; sometimes two regions of different pitch meeting at a boundary."""

    def lines(y_lo: float, y_hi: float) -> tuple[Rects, float, float]:
        pitch = rng.uniform(100.0, 240.0)
        width = float(np.clip(rng.uniform(0.35, 0.65) * pitch, 50.0, pitch - 48.0))
        offset = rng.uniform(0.0, pitch)
        xs = np.arange(offset - pitch, extent + pitch, pitch)
        return [(x, y_lo, x + width, y_hi) for x in xs], pitch, width

    rects, pitch, width = lines(0.0, extent)
    params: Params = {"pitch_nm": _r(pitch), "width_nm": _r(width), "regions": 1}
    if rng.random() < 0.3:
        split = rng.uniform(0.25, 0.75) * extent
        gap = rng.uniform(60.0, 200.0)
        rects = [(x0, y0, x1, split) for x0, y0, x1, _ in rects]
        upper, pitch2, width2 = lines(split + gap, extent)
        rects += upper
        params.update(
            regions=2, pitch2_nm=_r(pitch2), width2_nm=_r(width2), split_nm=_r(split), gap_nm=_r(gap)
        )
    return rects, params


def _line_ends(rng: np.random.Generator, extent: float) -> tuple[Rects, Params]:
    """Parallel lines broken into segments with tip-to-tip gaps."""
    pitch = rng.uniform(110.0, 220.0)
    width = float(np.clip(rng.uniform(0.4, 0.6) * pitch, 55.0, pitch - 50.0))
    gap_lo = rng.uniform(40.0, 90.0)
    gap_hi = gap_lo + rng.uniform(20.0, 120.0)
    seg_lo = rng.uniform(120.0, 300.0)
    seg_hi = seg_lo + rng.uniform(100.0, 700.0)
    rects: Rects = []
    for x in np.arange(rng.uniform(0.0, pitch) - pitch, extent + pitch, pitch):
        y = -rng.uniform(0.0, seg_hi)
        while y < extent:
            length = rng.uniform(seg_lo, seg_hi)
            rects.append((x, y, x + width, y + length))
            y += length + rng.uniform(gap_lo, gap_hi)
    return rects, {
        "pitch_nm": _r(pitch),
        "width_nm": _r(width),
        "gap_min_nm": _r(gap_lo),
        "gap_max_nm": _r(gap_hi),
        "segment_min_nm": _r(seg_lo),
        "segment_max_nm": _r(seg_hi),
    }


def _contacts(rng: np.random.Generator, extent: float) -> tuple[Rects, Params]:
    """Contact/via arrays: square grid, staggered grid, or isolated scattered contacts."""
    kind = str(rng.choice(["square", "staggered", "isolated"]))
    size_x = rng.uniform(85.0, 130.0)
    size_y = size_x * rng.uniform(1.0, 1.4) if rng.random() < 0.3 else size_x
    params: Params = {"kind": kind, "size_x_nm": _r(size_x), "size_y_nm": _r(size_y)}
    centres: list[tuple[float, float]] = []
    if kind in ("square", "staggered"):
        pitch_x = rng.uniform(size_x + 70.0, 320.0)
        pitch_y = rng.uniform(size_y + 70.0, 320.0)
        ox, oy = rng.uniform(0.0, pitch_x), rng.uniform(0.0, pitch_y)
        for j, cy in enumerate(np.arange(oy - pitch_y, extent + pitch_y, pitch_y)):
            shift = pitch_x / 2.0 if (kind == "staggered" and j % 2) else 0.0
            centres += [(cx + shift, cy) for cx in np.arange(ox - pitch_x, extent + pitch_x, pitch_x)]
        params.update(pitch_x_nm=_r(pitch_x), pitch_y_nm=_r(pitch_y))
    else:
        min_dist = rng.uniform(220.0, 420.0)
        for _ in range(int(3 * (extent / min_dist) ** 2)):
            c = rng.uniform(0.0, extent, 2)
            if all(np.hypot(c[0] - x, c[1] - y) >= min_dist for x, y in centres):
                centres.append((float(c[0]), float(c[1])))
        params.update(min_distance_nm=_r(min_dist))
    rects = [(cx - size_x / 2, cy - size_y / 2, cx + size_x / 2, cy + size_y / 2) for cx, cy in centres]
    return rects, params


def _shape_in_cell(
    rng: np.random.Generator, kind: str, x0: float, y0: float, w: float, h: float, arm: float
) -> Rects:
    """One L, T, U, jog or bar of arm width ``arm`` inside the box ``(x0, y0, w, h)``."""
    x1, y1 = x0 + w, y0 + h
    if kind == "L":
        return [(x0, y0, x0 + arm, y1), (x0, y0, x1, y0 + arm)]
    if kind == "T":
        xm = x0 + rng.uniform(0.25, 0.75) * (w - arm)
        return [(x0, y1 - arm, x1, y1), (xm, y0, xm + arm, y1)]
    if kind == "U":
        return [(x0, y0, x0 + arm, y1), (x1 - arm, y0, x1, y1), (x0, y0, x1, y0 + arm)]
    if kind == "jog":
        ym = y0 + rng.uniform(0.3, 0.7) * (h - arm)
        xm = x0 + rng.uniform(0.3, 0.7) * (w - arm)
        return (
            [(x0, ym, xm + arm, ym + arm), (xm, y0, xm + arm, y1)]
            if rng.random() < 0.5
            else [(x0, y0, xm + arm, y0 + arm), (xm, y0, xm + arm, y1 - arm), (xm, y1 - arm, x1, y1)]
        )
    return [(x0, y0 + (h - arm) / 2, x1, y0 + (h + arm) / 2)]


def _shapes(rng: np.random.Generator, extent: float) -> tuple[Rects, Params]:
    """L, T, U shapes, jogs and bars on a jittered grid, randomly rotated."""
    cell = rng.uniform(280.0, 460.0)
    arm_lo = rng.uniform(55.0, 75.0)
    arm_hi = arm_lo + rng.uniform(0.0, 40.0)
    space = rng.uniform(70.0, 120.0)
    kinds = ["L", "T", "U", "jog", "bar"]
    room = cell - space  # the shape's box, leaving ``space`` to the next cell
    rects: Rects = []
    for cy in np.arange(-cell, extent + cell, cell):
        for cx in np.arange(-cell, extent + cell, cell):
            # Arms thin enough that a box 2.5 arms wide fits the room; _u guards the ranges against rounding.
            arm = min(_u(rng, arm_lo, arm_hi), room / 2.6)
            w = _u(rng, 2.5 * arm, room)
            h = _u(rng, 2.5 * arm, room)
            bx = cx + _u(rng, 0.0, room - w)
            by = cy + _u(rng, 0.0, room - h)
            shape = _shape_in_cell(rng, str(rng.choice(kinds)), bx, by, w, h, arm)
            if rng.random() < 0.5:
                shape = _mirror_x(shape, bx, w)
            if rng.random() < 0.5:
                shape = _mirror_y(shape, by, h)
            rects += shape
    return rects, {
        "cell_nm": _r(cell),
        "arm_min_nm": _r(arm_lo),
        "arm_max_nm": _r(arm_hi),
        "space_nm": _r(space),
    }


def _mirror_x(rects: Rects, bx: float, w: float) -> Rects:
    return [(2 * bx + w - x1, y0, 2 * bx + w - x0, y1) for x0, y0, x1, y1 in rects]


def _mirror_y(rects: Rects, by: float, h: float) -> Rects:
    return [(x0, 2 * by + h - y1, x1, 2 * by + h - y0) for x0, y0, x1, y1 in rects]


def _routing(rng: np.random.Generator, extent: float) -> tuple[Rects, Params]:
    """M1-like routing: wires on tracks with random lengths and gaps, jogs between tracks."""
    pitch = rng.uniform(110.0, 170.0)
    width = float(np.clip(rng.uniform(0.45, 0.6) * pitch, 55.0, pitch - 50.0))
    min_gap = rng.uniform(60.0, 100.0)
    mean_len = rng.uniform(150.0, 700.0)
    mean_gap = rng.uniform(80.0, 350.0)
    jog_rate = rng.uniform(0.0, 0.3)
    ys = np.arange(rng.uniform(0.0, pitch) - pitch, extent + pitch, pitch)
    n = int(extent) + 1
    occupied = np.zeros((len(ys), n), dtype=bool)
    for t in range(len(ys)):
        x = -rng.uniform(0.0, mean_len)
        while x < n:
            length = max(width, rng.exponential(mean_len))
            a, b = int(max(x, 0)), int(min(x + length, n))
            occupied[t, a:b] = True
            x += length + min_gap + rng.exponential(mean_gap)
    rects: Rects = []
    for t in range(len(ys) - 1):
        runs = _runs(occupied[t])
        for a, b in runs:
            if b - a > 2 * width and rng.random() < jog_rate:
                xj = rng.uniform(a, b - width)
                rects.append((xj, ys[t], xj + width, ys[t + 1] + width))
                occupied[t + 1, int(xj) : int(xj + width) + 1] = True
    for t, y in enumerate(ys):
        row = occupied[t].copy()
        for a, b in _runs(~row):
            if a > 0 and b < n and b - a < min_gap:
                row[a:b] = True
        rects += [(float(a), y, float(b), y + width) for a, b in _runs(row)]
    if rng.random() < 0.5:
        rects = _transpose(rects)
    return rects, {
        "pitch_nm": _r(pitch),
        "width_nm": _r(width),
        "min_gap_nm": _r(min_gap),
        "mean_length_nm": _r(mean_len),
        "mean_gap_nm": _r(mean_gap),
        "jog_rate": round(jog_rate, 3),
    }


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Half-open index runs where ``row`` is True."""
    padded = np.concatenate([[False], row, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2], strict=True)]


def _rect_distance(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    dx = max(0.0, b[0] - a[2], a[0] - b[2])
    dy = max(0.0, b[1] - a[3], a[1] - b[3])
    return float(np.hypot(dx, dy))


def _mirror_tile(
    rect: tuple[float, float, float, float], i: int, j: int, w: float, h: float
) -> tuple[float, float, float, float]:
    """``rect`` of the motif as drawn in cell ``(i, j)`` of a tiling mirrored in x and y on odd cells."""
    x0, y0, x1, y1 = rect
    if i % 2:
        x0, x1 = w - x1, w - x0
    if j % 2:
        y0, y1 = h - y1, h - y0
    return (x0 + i * w, y0 + j * h, x1 + i * w, y1 + j * h)


def _fits(group: Rects, accepted: list[Rects], w: float, h: float, space: float) -> bool:
    """Whether ``group`` keeps ``space`` from everything in the mirrored tiling.

    Only a group's own mirror images may touch it (a bar on a mirror axis is
    shared with the neighbouring cell); distinct shapes never merge.
    """
    cells = [(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)]
    others = [_mirror_tile(r, i, j, w, h) for g in accepted for r in g for i, j in cells]
    images = [_mirror_tile(r, i, j, w, h) for r in group for i, j in cells if (i, j) != (0, 0)]
    return all(_rect_distance(r, o) >= space for r in group for o in others) and all(
        not 0.0 < _rect_distance(r, o) < space for r in group for o in images
    )


def _sram(rng: np.random.Generator, extent: float) -> tuple[Rects, Params]:
    """SRAM-like array: a point-symmetric cell (straps, stubs, L nodes, pads) tiled with mirroring."""
    width = _u(rng, 55.0, 80.0)
    space = _u(rng, 55.0, 80.0)
    pad = _u(rng, 85.0, 115.0)
    # Big enough for an L (three widths) between the straps and in each half of the cell.
    cell_w = 3.0 * space + 2.0 * _u(rng, 2.5, 4.0) * width
    cell_h = width + 2.0 * space + _u(rng, 3.0, 5.0) * width
    # Interior shapes live in the left half between the straps; their point reflections fill the right half.
    x_min, x_max = space, cell_w / 2.0 - space / 2.0
    y_min, y_max = width / 2.0 + space, cell_h - width / 2.0 - space

    def reflect(group: Rects) -> Rects:
        return [(cell_w - x1, cell_h - y1, cell_w - x0, cell_h - y0) for x0, y0, x1, y1 in group]

    def strap() -> Rects:  # horizontal bar on the cell's lower mirror axis, shared with the neighbour below
        x0 = _u(rng, 0.0, cell_w / 3.0)
        return [(x0, 0.0, _u(rng, x0 + 2.0 * width, cell_w - space), width / 2.0)]

    def stub() -> Rects:  # vertical bar on the left mirror axis, shared with the neighbour on the left
        y0 = _u(rng, y_min, cell_h / 2.0)
        return [(0.0, y0, width / 2.0, _u(rng, y0 + width, y_max))]

    def node() -> Rects:  # an L: vertical arm plus a horizontal arm at its top or bottom
        xm = _u(rng, x_min, x_max - 2.0 * width)
        y_lo = _u(rng, y_min, y_max - 2.5 * width)
        y_hi = _u(rng, y_lo + 2.0 * width, y_max)
        ya = y_lo if rng.random() < 0.5 else y_hi - width
        if rng.random() < 0.7:
            arm = (xm, ya, _u(rng, xm + 2.0 * width, x_max), ya + width)
        else:
            arm = (_u(rng, x_min - space + width / 2.0, xm - width), ya, xm + width, ya + width)
        return [(xm, y_lo, xm + width, y_hi), arm]

    def landing() -> Rects:
        x0 = _u(rng, x_min, x_max - pad)
        y0 = _u(rng, y_min, y_max - pad)
        return [(x0, y0, x0 + pad, y0 + pad)]

    motif: list[Rects] = []
    kinds: list[str] = []
    plan = (
        ("node", node, True),
        ("strap", strap, False),
        ("stub", stub, False),
        ("pad", landing, True),
        ("node", node, True),
    )
    for kind, make, symmetric in plan:
        for _ in range(60):
            group = [r for r in make() if r[2] > r[0] and r[3] > r[1]]
            if not group or not _fits(group, motif, cell_w, cell_h, space):
                continue
            if symmetric and not _fits(reflect(group), [*motif, group], cell_w, cell_h, space):
                continue
            motif += [group, reflect(group)] if symmetric else [group]
            kinds.append(kind)
            break
    rects: Rects = []
    for j, y in enumerate(np.arange(-cell_h, extent + cell_h, cell_h)):
        for i, x in enumerate(np.arange(-cell_w, extent + cell_w, cell_w)):
            for group in motif:
                for r in group:
                    x0, y0, x1, y1 = _mirror_tile(r, i, j, cell_w, cell_h)
                    rects.append(
                        (x0 - i * cell_w + x, y0 - j * cell_h + y, x1 - i * cell_w + x, y1 - j * cell_h + y)
                    )
    return rects, {
        "cell_w_nm": _r(cell_w),
        "cell_h_nm": _r(cell_h),
        "width_nm": _r(width),
        "space_nm": _r(space),
        "pad_nm": _r(pad),
        "motif": "+".join(kinds),
    }


GENERATORS: dict[str, Callable[[np.random.Generator, float], tuple[Rects, Params]]] = {
    "grating": _grating,
    "line_ends": _line_ends,
    "contacts": _contacts,
    "shapes": _shapes,
    "routing": _routing,
    "sram": _sram,
}


def generate_layout(family: str, rng: np.random.Generator, extent_nm: float = 2048.0) -> Layout:
    """A new random layout of ``family`` covering ``[0, extent_nm)^2``."""
    generator = GENERATORS.get(family)
    if generator is None:
        raise ConfigError(f"unknown layout family {family!r} (known: {', '.join(FAMILIES)})")
    rects, params = generator(rng, float(extent_nm))
    if family not in ("contacts", "routing") and rng.random() < 0.5:
        rects = _transpose(rects)
        params = {**params, "orientation": "transposed"}
    return Layout(
        clean_rects(np.asarray(rects, dtype=np.float64), extent_nm), float(extent_nm), family, params
    )
