"""Mask-level defect injection with known ground truth.

Each injector edits the layout's rectangles near a chosen clip window and says
where. ``strength`` (0, 1, 2, ...) makes the edit more severe; the farm raises it
when a weak edit did not change the print enough, so every labelled defect is
visible in the print. Severity is measured from prints (see ``toolkit.litho.farm``).

- ``bridge``: an extra opening across the space between two neighbouring features.
- ``pinch``: a notch cut into a long feature (one side or both: a neck).
- ``pullback``: a free line end shortened on the mask.
- ``missing_contact``: an isolated contact removed.
- ``merged_contact``: two neighbouring contacts joined by an opening.
- ``sidelobe``: a sub-resolution assist bar (40 nm and up) placed in free space
  and the dose raised (x1.45 and up): the assist, which stays below threshold at
  nominal dose, prints as a spurious blob. (On a binary mask, sidelobes of real
  features peak well under the print threshold at 193i; we scanned quads,
  crosses and frames of openings and none printed a blob separated from the
  features, so the assist is the reliable construction.)

Severity (computed by the farm from prints with and without the defect, same
dose and focus): the printed area changed, in nm^2; for ``sidelobe`` only the
spurious area printed at the assist. ``defect_epe_nm`` is the worst edge
displacement, in nm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from shared.errors import ContractError
from toolkit.litho.geometry import LabelScalar, Layout, rect_gaps

DEFECT_TYPES: tuple[str, ...] = (
    "bridge",
    "pinch",
    "pullback",
    "missing_contact",
    "merged_contact",
    "sidelobe",
)

# Families that usually offer a site for each defect type (first choice first).
DEFECT_FAMILIES: dict[str, tuple[str, ...]] = {
    "bridge": ("routing", "grating", "shapes", "sram", "line_ends"),
    "pinch": ("grating", "routing", "line_ends", "shapes"),
    "pullback": ("line_ends", "routing", "shapes", "sram"),
    "missing_contact": ("contacts",),
    "merged_contact": ("contacts",),
    "sidelobe": ("contacts", "shapes", "routing", "sram"),
}

Window = tuple[float, float, float, float]
INSET_NM = 110.0
MAX_CANDIDATES = 80


class NoDefectSite(ContractError):
    """The layout window offers no site for the requested defect type (this draw)."""


@dataclass(frozen=True)
class DefectInjection:
    """The defective layout, where the defect is (nm), and a dose factor (sidelobe only)."""

    defect: str
    layout: Layout
    bbox_nm: Window
    dose_factor: float = 1.0
    params: dict[str, LabelScalar] = field(default_factory=dict)


def _inset(window: Window, inset: float = INSET_NM) -> Window:
    x0, y0, x1, y1 = window
    return (x0 + inset, y0 + inset, x1 - inset, y1 - inset)


def _intersects(rects: np.ndarray, box: Window) -> np.ndarray:
    return (rects[:, 0] < box[2]) & (rects[:, 2] > box[0]) & (rects[:, 1] < box[3]) & (rects[:, 3] > box[1])


def _candidates(rects: np.ndarray, window: Window, rng: np.random.Generator) -> np.ndarray:
    idx = np.flatnonzero(_intersects(rects, _inset(window)))
    rng.shuffle(idx)
    return idx[:MAX_CANDIDATES]


def _contact_like(rects: np.ndarray) -> np.ndarray:
    w = rects[:, 2] - rects[:, 0]
    h = rects[:, 3] - rects[:, 1]
    return (np.maximum(w, h) <= 160.0) & (np.maximum(w, h) <= 1.6 * np.minimum(w, h))


def _touching(box: np.ndarray, rects: np.ndarray, skip: int, pad_nm: float) -> bool:
    """Whether ``box`` comes within ``pad_nm`` of any rectangle other than ``skip``."""
    gx, gy = rect_gaps(box, rects)
    near = (gx < pad_nm) & (gy < pad_nm)
    if 0 <= skip < len(near):
        near[skip] = False
    return bool(near.any())


def _point_in(box: Window, x: float, y: float) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def _connector(
    a: np.ndarray, b: np.ndarray, width_nm: float, axis: int, rng: np.random.Generator, inner: Window
) -> np.ndarray | None:
    """An opening joining ``a`` and ``b`` across their gap along ``axis`` (0 = x)."""
    other = 1 - axis
    lo = max(a[other], b[other])
    hi = min(a[other + 2], b[other + 2])
    width = min(width_nm, hi - lo)
    if width <= 0:
        return None
    # Drawn as an offset from ``lo``: ``hi - width`` can round below ``lo`` when width == hi - lo.
    start = lo + rng.uniform(0.0, max(hi - lo - width, 0.0))
    first, second = (a, b) if a[axis] < b[axis] else (b, a)
    box = np.zeros(4)
    box[axis], box[axis + 2] = first[axis + 2], second[axis]
    box[other], box[other + 2] = start, start + width
    if not _point_in(inner, 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])):
        return None
    return box


def _pairs(
    rects: np.ndarray,
    idx: np.ndarray,
    gap_lo: float,
    gap_hi: float,
    min_overlap: float,
    subset: np.ndarray | None = None,
) -> list[tuple[int, int, int]]:
    """(i, j, axis) of rectangles facing each other across a gap in ``[gap_lo, gap_hi]``."""
    out: list[tuple[int, int, int]] = []
    for i in idx:
        gx, gy = rect_gaps(rects[i], rects)
        ov_y = np.minimum(rects[i, 3], rects[:, 3]) - np.maximum(rects[i, 1], rects[:, 1])
        ov_x = np.minimum(rects[i, 2], rects[:, 2]) - np.maximum(rects[i, 0], rects[:, 0])
        ok_x = (gx >= gap_lo) & (gx <= gap_hi) & (ov_y >= min_overlap)
        ok_y = (gy >= gap_lo) & (gy <= gap_hi) & (ov_x >= min_overlap)
        if subset is not None:
            ok_x &= subset
            ok_y &= subset
        out += [(int(i), int(j), 0) for j in np.flatnonzero(ok_x)]
        out += [(int(i), int(j), 1) for j in np.flatnonzero(ok_y)]
    return out


def _bridge(
    layout: Layout, window: Window, rng: np.random.Generator, strength: int
) -> DefectInjection | None:
    rects = layout.rects
    contact = _contact_like(rects)
    idx = _candidates(rects, window, rng)
    idx = idx[~contact[idx]]
    pairs = _pairs(rects, idx, 30.0, 200.0, 50.0, subset=~contact)
    rng.shuffle(pairs)
    width = 45.0 + 12.0 * strength + rng.uniform(0.0, 20.0)
    for i, j, axis in pairs:
        box = _connector(rects[i], rects[j], width, axis, rng, _inset(window))
        if box is not None:
            return DefectInjection(
                "bridge",
                layout.with_rects(np.vstack([rects, box])),
                _box(box),
                params={"bridge_width_nm": round(float(min(width, box[2 + 1 - axis] - box[1 - axis])), 1)},
            )
    return None


def _box(arr: np.ndarray) -> Window:
    return (float(arr[0]), float(arr[1]), float(arr[2]), float(arr[3]))


def _pinch(layout: Layout, window: Window, rng: np.random.Generator, strength: int) -> DefectInjection | None:
    rects = layout.rects
    inner = _inset(window)
    for i in _candidates(rects, window, rng):
        r = rects[i]
        w, h = r[2] - r[0], r[3] - r[1]
        axis = 0 if w >= h else 1  # long axis
        length, width = max(w, h), min(w, h)
        if length < 220.0 or width < 50.0:
            continue
        lo = max(r[axis] + 80.0, inner[axis])
        hi = min(r[axis + 2] - 80.0, inner[axis + 2])
        notch = 50.0 + 15.0 * strength + rng.uniform(0.0, 30.0)
        if hi - lo < notch:
            continue
        t0 = lo + rng.uniform(0.0, hi - lo - notch)  # hi - lo >= notch, so never an empty range
        keep = float(np.clip(rng.uniform(0.25, 0.45) - 0.08 * strength, 0.08, 0.5)) * width
        other = 1 - axis
        if rng.random() < 0.5:  # neck: cut both sides
            n_lo = r[other] + (width - keep) / 2.0
            n_hi = n_lo + keep
        elif rng.random() < 0.5:
            n_lo, n_hi = r[other], r[other] + keep
        else:
            n_lo, n_hi = r[other + 2] - keep, r[other + 2]
        pieces = []
        for a, b, c, d in (
            (r[axis], t0, r[other], r[other + 2]),
            (t0, t0 + notch, n_lo, n_hi),
            (t0 + notch, r[axis + 2], r[other], r[other + 2]),
        ):
            piece = np.zeros(4)
            piece[axis], piece[axis + 2], piece[other], piece[other + 2] = a, b, c, d
            pieces.append(piece)
        cut = np.zeros(4)
        cut[axis], cut[axis + 2], cut[other], cut[other + 2] = t0, t0 + notch, r[other], r[other + 2]
        if _touching(cut, rects, int(i), 1.0):
            continue  # another rectangle covers the notch
        new = np.vstack([np.delete(rects, i, axis=0), *pieces])
        return DefectInjection(
            "pinch",
            layout.with_rects(new),
            _box(cut),
            params={"pinch_keep_nm": round(keep, 1), "pinch_length_nm": round(notch, 1)},
        )
    return None


def _pullback(
    layout: Layout, window: Window, rng: np.random.Generator, strength: int
) -> DefectInjection | None:
    rects = layout.rects
    inner = _inset(window)
    for i in _candidates(rects, window, rng):
        r = rects[i]
        w, h = r[2] - r[0], r[3] - r[1]
        axis = 0 if w >= h else 1
        length, width = max(w, h), min(w, h)
        if length < 2.0 * width or length < 150.0:
            continue
        trim = min(30.0 + 20.0 * strength + rng.uniform(0.0, 20.0), length - 80.0)
        if trim < 20.0:
            continue
        for end in rng.permutation(2):
            cap = r.copy()
            if end == 0:
                cap[axis + 2] = r[axis] + width
            else:
                cap[axis] = r[axis + 2] - width
            tip = r[axis] if end == 0 else r[axis + 2]
            centre_other = 0.5 * (r[1 - axis] + r[3 - axis])
            tip_xy = (tip, centre_other) if axis == 0 else (centre_other, tip)
            if not _point_in(inner, *tip_xy) or _touching(cap, rects, int(i), 1.0):
                continue
            new_r = r.copy()
            if end == 0:
                new_r[axis] += trim
            else:
                new_r[axis + 2] -= trim
            removed = r.copy()
            removed[axis + 2 if end == 0 else axis] = new_r[axis] if end == 0 else new_r[axis + 2]
            new = rects.copy()
            new[i] = new_r
            return DefectInjection(
                "pullback", layout.with_rects(new), _box(removed), params={"pullback_trim_nm": round(trim, 1)}
            )
    return None


def _missing_contact(
    layout: Layout, window: Window, rng: np.random.Generator, strength: int
) -> DefectInjection | None:
    rects = layout.rects
    contact = _contact_like(rects)
    for i in _candidates(rects, window, rng):
        if not contact[i] or _touching(rects[i], rects, int(i), 1.0):
            continue
        return DefectInjection(
            "missing_contact", layout.with_rects(np.delete(rects, i, axis=0)), _box(rects[i])
        )
    return None


def _merged_contact(
    layout: Layout, window: Window, rng: np.random.Generator, strength: int
) -> DefectInjection | None:
    rects = layout.rects
    contact = _contact_like(rects)
    idx = _candidates(rects, window, rng)
    idx = idx[contact[idx]]
    pairs = _pairs(rects, idx, 1.0, 240.0, 50.0, subset=contact)
    rng.shuffle(pairs)
    for i, j, axis in pairs:
        size = min(rects[i, 3 - axis] - rects[i, 1 - axis], rects[j, 3 - axis] - rects[j, 1 - axis])
        box = _connector(
            rects[i], rects[j], size * min(0.55 + 0.15 * strength, 1.0), axis, rng, _inset(window)
        )
        if box is not None:
            return DefectInjection("merged_contact", layout.with_rects(np.vstack([rects, box])), _box(box))
    return None


def _sidelobe(
    layout: Layout, window: Window, rng: np.random.Generator, strength: int
) -> DefectInjection | None:
    rects = layout.rects
    inner = _inset(window)
    bar_w = 40.0 + 5.0 * strength
    clearance = 60.0
    near = rects[_intersects(rects, _inset(window, INSET_NM - 2 * clearance))] if len(rects) else rects
    n_try = 2000
    length = rng.uniform(110.0, 260.0, n_try)
    horizontal = rng.random(n_try) < 0.5
    w = np.where(horizontal, length, bar_w)
    h = np.where(horizontal, bar_w, length)
    x0 = inner[0] + rng.random(n_try) * np.maximum(inner[2] - inner[0] - w, 0.0)
    y0 = inner[1] + rng.random(n_try) * np.maximum(inner[3] - inner[1] - h, 0.0)
    bars = np.stack([x0, y0, x0 + w, y0 + h], axis=1)
    if len(near):  # distance from every candidate bar to every nearby feature, all at once
        gap_x = np.maximum(
            0.0, np.maximum(near[None, :, 0] - bars[:, None, 2], bars[:, None, 0] - near[None, :, 2])
        )
        gap_y = np.maximum(
            0.0, np.maximum(near[None, :, 1] - bars[:, None, 3], bars[:, None, 1] - near[None, :, 3])
        )
        free = (np.hypot(gap_x, gap_y) >= clearance).all(axis=1)
    else:
        free = np.ones(n_try, dtype=bool)
    if not free.any():
        return None
    bar = bars[int(np.flatnonzero(free)[0])]
    dose = round(1.45 + 0.1 * strength, 3)
    return DefectInjection(
        "sidelobe",
        layout.with_rects(np.vstack([rects, bar])),
        _box(bar),
        dose_factor=dose,
        params={"assist_width_nm": bar_w, "dose_factor": dose},
    )


INJECTORS: dict[str, Callable[[Layout, Window, np.random.Generator, int], DefectInjection | None]] = {
    "bridge": _bridge,
    "pinch": _pinch,
    "pullback": _pullback,
    "missing_contact": _missing_contact,
    "merged_contact": _merged_contact,
    "sidelobe": _sidelobe,
}


def inject_defect(
    layout: Layout, defect: str, window_nm: Window, rng: np.random.Generator, strength: int = 0
) -> DefectInjection:
    """Inject ``defect`` into ``layout`` inside ``window_nm``.

    Raises ContractError for an unknown type and its subclass :class:`NoDefectSite`
    when the window offers no site (the site search is random: another draw may find one).
    """
    injector = INJECTORS.get(defect)
    if injector is None:
        raise ContractError(f"unknown defect type {defect!r} (known: {', '.join(DEFECT_TYPES)})")
    result = injector(layout, window_nm, rng, strength)
    if result is None:
        raise NoDefectSite(f"no site for a {defect} defect in this {layout.family} layout window")
    return result


def applicable_defects(layout: Layout, window_nm: Window, rng: np.random.Generator) -> list[str]:
    """Defect types with at least one site in the window (a dry run of each injector)."""
    return [name for name in DEFECT_TYPES if INJECTORS[name](layout, window_nm, rng, 0) is not None]
