"""Manhattan layout geometry in nm and its exact area-weighted rasterization.

A :class:`Layout` is a set of axis-aligned rectangles (possibly overlapping; the
drawn shape is their union) over a square canvas larger than one clip, so that
moving the clip window reveals real neighbouring content.

Rasterization is exact: each output pixel holds the fraction of its area covered
by the union of the rectangles. The union is evaluated on the grid compressed to
the rectangles' own edge coordinates (every compressed cell is either fully in or
fully out), and the pixel coverage is then two small matrix products of cell-to-
pixel overlap lengths. No supersampling, no double counting where rectangles
overlap.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from shared.errors import ConfigError, ContractError

LabelScalar = float | int | str


@dataclass(frozen=True)
class Layout:
    """Manhattan geometry in nm: ``rects`` rows are ``x0, y0, x1, y1``; the canvas is ``[0, extent_nm)^2``."""

    rects: np.ndarray
    extent_nm: float
    family: str
    params: dict[str, LabelScalar] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rects = np.asarray(self.rects, dtype=np.float64).reshape(-1, 4)
        if not np.isfinite(rects).all():
            raise ContractError("layout rectangles must be finite")
        if (rects[:, 2] < rects[:, 0]).any() or (rects[:, 3] < rects[:, 1]).any():
            raise ContractError("layout rectangles need x0 <= x1 and y0 <= y1")
        rects.setflags(write=False)
        object.__setattr__(self, "rects", rects)

    def with_rects(self, rects: np.ndarray, **extra_params: LabelScalar) -> Layout:
        """The same layout with other rectangles (defect injection, bias)."""
        return Layout(
            np.asarray(rects, dtype=np.float64), self.extent_nm, self.family, {**self.params, **extra_params}
        )


def clean_rects(rects: np.ndarray, extent_nm: float | None = None, min_size_nm: float = 1e-6) -> np.ndarray:
    """Clip rectangles to the canvas (when ``extent_nm`` is given) and drop empty ones."""
    out = np.asarray(rects, dtype=np.float64).reshape(-1, 4).copy()
    if extent_nm is not None:
        out = np.clip(out, 0.0, extent_nm)
    keep = ((out[:, 2] - out[:, 0]) > min_size_nm) & ((out[:, 3] - out[:, 1]) > min_size_nm)
    return out[keep]


def bias_rects(rects: np.ndarray, bias_nm: float) -> np.ndarray:
    """Grow (positive) or shrink (negative) every rectangle by ``bias_nm`` on each side."""
    out = np.asarray(rects, dtype=np.float64).reshape(-1, 4).copy()
    out[:, :2] -= bias_nm
    out[:, 2:] += bias_nm
    return clean_rects(out)


def rect_gaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis gaps (0 where the projections overlap) between rectangle ``a`` and rows of ``b``."""
    gap_x = np.maximum(0.0, np.maximum(b[:, 0] - a[2], a[0] - b[:, 2]))
    gap_y = np.maximum(0.0, np.maximum(b[:, 1] - a[3], a[1] - b[:, 3]))
    return gap_x, gap_y


def _overlap_matrix(
    edges_nm: np.ndarray, origin_nm: float, size_px: int, nm_per_px: float
) -> sparse.csr_matrix:
    """Sparse (pixels, cells) overlap length of compressed cell ``j`` with pixel ``i``, in pixel units.

    Sparse products keep the multithreaded BLAS out of the hot path (it thrashes on busy machines).
    """
    lo_px = (edges_nm[:-1] - origin_nm) / nm_per_px
    hi_px = (edges_nm[1:] - origin_nm) / nm_per_px
    first = np.clip(np.floor(lo_px).astype(np.int64), 0, size_px - 1)
    last = np.clip(np.ceil(hi_px).astype(np.int64) - 1, 0, size_px - 1)
    counts = np.maximum(last - first + 1, 0)
    cells = np.repeat(np.arange(len(lo_px)), counts)
    pixels = np.repeat(first, counts) + (
        np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    )
    overlap = np.minimum(hi_px[cells], pixels + 1.0) - np.maximum(lo_px[cells], pixels)
    overlap = np.maximum(overlap, 0.0).astype(np.float32)
    return sparse.csr_matrix((overlap, (pixels, cells)), shape=(size_px, len(lo_px)))


def rasterize(
    layout: Layout | np.ndarray, origin_nm: tuple[float, float], size_px: int, nm_per_px: float
) -> np.ndarray:
    """Float32 ``(size_px, size_px)`` mask of a window; 1 = feature, edges are exact area fractions.

    ``origin_nm`` is the (x, y) of the window's lower-left corner; row ``i`` of the
    result covers ``y`` in ``[y0 + i*nm_per_px, y0 + (i+1)*nm_per_px)`` (row index
    grows with y, column index with x).
    """
    if size_px <= 0 or not nm_per_px > 0:
        raise ConfigError(f"rasterize needs size_px > 0 and nm_per_px > 0, got {size_px}, {nm_per_px}")
    rects = (
        layout.rects if isinstance(layout, Layout) else np.asarray(layout, dtype=np.float64).reshape(-1, 4)
    )
    x_lo, y_lo = float(origin_nm[0]), float(origin_nm[1])
    span = size_px * nm_per_px
    x_hi, y_hi = x_lo + span, y_lo + span
    win = np.clip(rects, [x_lo, y_lo, x_lo, y_lo], [x_hi, y_hi, x_hi, y_hi])
    keep = (win[:, 2] > win[:, 0]) & (win[:, 3] > win[:, 1])
    win = win[keep]
    if len(win) == 0:
        return np.zeros((size_px, size_px), dtype=np.float32)
    xs = np.unique(np.concatenate([win[:, 0], win[:, 2]]))
    ys = np.unique(np.concatenate([win[:, 1], win[:, 3]]))
    ix0, ix1 = np.searchsorted(xs, win[:, 0]), np.searchsorted(xs, win[:, 2])
    iy0, iy1 = np.searchsorted(ys, win[:, 1]), np.searchsorted(ys, win[:, 3])
    # 2-D difference array over compressed cells: count of rectangles covering each cell.
    diff = np.zeros((len(ys) + 1, len(xs) + 1), dtype=np.int32)
    np.add.at(diff, (iy0, ix0), 1)
    np.add.at(diff, (iy0, ix1), -1)
    np.add.at(diff, (iy1, ix0), -1)
    np.add.at(diff, (iy1, ix1), 1)
    covered = np.cumsum(np.cumsum(diff, axis=0), axis=1)[: len(ys) - 1, : len(xs) - 1] > 0
    wy = _overlap_matrix(ys, y_lo, size_px, nm_per_px)
    wx = _overlap_matrix(xs, x_lo, size_px, nm_per_px)
    rows = wy @ covered.astype(np.float32)  # (pixels_y, cells_x)
    coverage = np.asarray((wx @ rows.T).T)
    return np.clip(coverage, 0.0, 1.0).astype(np.float32)


def manhattan_polygon_to_rects(points_nm: np.ndarray) -> np.ndarray:
    """Decompose a simple rectilinear polygon (vertices in order, not closed) into disjoint rectangles.

    Scanline with the even-odd rule: between consecutive vertex y's, the vertical
    edges spanning the band cut it into inside/outside x intervals.
    """
    pts = np.asarray(points_nm, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 4:
        raise ConfigError(f"a polygon needs at least 4 vertices, got {len(pts)}")
    nxt = np.roll(pts, -1, axis=0)
    vertical = np.isclose(pts[:, 0], nxt[:, 0])
    horizontal = np.isclose(pts[:, 1], nxt[:, 1])
    if not (vertical | horizontal).all():
        raise ConfigError("polygon is not Manhattan (an edge is neither horizontal nor vertical)")
    v_x = pts[vertical, 0]
    v_ylo = np.minimum(pts[vertical, 1], nxt[vertical, 1])
    v_yhi = np.maximum(pts[vertical, 1], nxt[vertical, 1])
    ys = np.unique(pts[:, 1])
    out: list[tuple[float, float, float, float]] = []
    for y0, y1 in itertools.pairwise(ys):
        mid = 0.5 * (y0 + y1)
        crossing = np.sort(v_x[(v_ylo < mid) & (v_yhi > mid)])
        for x0, x1 in zip(crossing[0::2], crossing[1::2], strict=False):
            if x1 > x0:
                out.append((float(x0), float(y0), float(x1), float(y1)))
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)
