"""Judge two binarised prints of one mask: what another dose or focus may change, and what it may not.

When the masks of two results agree on their overlap, their prints may still
differ: a re-simulation at another dose (+-5 %) or focus (+-60 nm) moves every
print edge by a few pixels (measured with ``bench/hybrid_bench.py``: tens to
about 1300 pixels of a 256 px clip beyond 2 px slivers). What such a
re-simulation does *not* change is the print's topology: nothing bridges, pinches
off, vanishes or appears. A bridge forming, a contact missing or a sidelobe
printing is a process-window hotspot, a result to score, not a duplicate.

So the prints are accepted when

1. **topology**: the foreground components (8-connected) of the two prints are
   matched one to one (each component of one overlaps exactly one of the other,
   and vice versa), and so are the holes (4-connected background components that
   do not touch the overlap's border); a component or hole lying wholly within
   ``edge_band_px`` of the overlap's border is left out, since most of it lies
   outside the window and its fate cannot be judged there;
2. **edges**: the pixels where the prints differ, less those within
   ``edge_band_px`` of an edge of *both* prints, then less slivers up to
   ``tolerance_px`` wide (the old check's morphological opening), number at most
   ``mismatch_max_px``.

``edge_band_px = 0`` is the older check alone (2. with no band; no topology).

**Marginal features.** A feature at the resolution limit may print at one dose
or focus and not at another: at +-40-60 nm defocus a sliver of a line end, a
contact printing at a third of its drawn size or a sub-resolution island comes
and goes (measured with ``bench/hybrid_bench.py``: 1-20 missed re-simulations
per run). When the caller knows the two results were simulated under different
process conditions (``marginal_width_fraction`` > 0 and the ``drawn`` mask of the
overlap given), a component that vanishes or appears is forgiven when it is
*marginal*: at least half of it lies on a drawn feature, and its printed
half-width (largest inscribed radius) is at most ``marginal_width_fraction`` of
the drawn features' under it. A print in free space (a sidelobe), a feature
printing near its drawn size going missing, a bridge, a pinch and a changed hole
never are. The forgiven components are taken out of both prints and the rest is
judged as above.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Topology = str  # "same", "marginal" (only marginal features differ), "components", "holes" or "not_checked"


@dataclass(frozen=True)
class PrintJudgement:
    """Whether two prints may be one layout's, and what was measured."""

    accepted: bool
    mismatch_px: int  # differing pixels beyond the edge band and the sliver tolerance
    topology: Topology
    edge_px: float  # largest distance of a differing pixel to the farther of the two prints' edges (nan: off)
    marginal: tuple[int, int] = (0, 0)  # marginal components forgiven: vanished, appeared

    def details(self) -> dict[str, object]:
        found: dict[str, object] = {"print_mismatch_px": self.mismatch_px}
        if self.topology != "not_checked":
            found.update(print_topology=self.topology, print_edge_px=round(self.edge_px, 2))
        if any(self.marginal):
            found["print_marginal_vanished"], found["print_marginal_appeared"] = self.marginal
        return found


def _open(diff: np.ndarray, tolerance_px: int) -> np.ndarray:
    if tolerance_px > 0 and diff.any():
        size = 2 * tolerance_px + 1
        return cv2.morphologyEx(diff.astype(np.uint8), cv2.MORPH_OPEN, np.ones((size, size), np.uint8)) > 0
    return diff


def edge_distance(binary: np.ndarray) -> np.ndarray:
    """Per pixel, the distance (px) to the nearest pixel of the other value: 1 next to an edge."""
    inside = binary.astype(np.uint8)
    to_empty = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_5)
    to_print = cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_5)
    return np.where(binary, to_empty, to_print)


def _near_border(shape: tuple[int, int], band_px: int) -> np.ndarray:
    near = np.zeros(shape, dtype=bool)
    if band_px > 0:
        near[:band_px, :] = near[-band_px:, :] = True
        near[:, :band_px] = near[:, -band_px:] = True
    return near


def _labels(binary: np.ndarray, connectivity: int) -> tuple[int, np.ndarray]:
    n, labels = cv2.connectedComponents(binary.astype(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S)
    return int(n), labels


def _ignorable(labels: np.ndarray, n: int, near_border: np.ndarray) -> np.ndarray:
    """Per label, whether all its pixels lie within the border band (index 0 unused)."""
    total = np.bincount(labels.ravel(), minlength=n)
    at_border = np.bincount(labels[near_border], minlength=n)
    return (total == at_border) & (total > 0)


def _partners(
    labels_a: np.ndarray, n_a: int, labels_b: np.ndarray, n_b: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per label of each side, how many labels of the other side it overlaps (index 0: none)."""
    both = (labels_a > 0) & (labels_b > 0)
    pairs = np.unique(labels_a[both].astype(np.int64) * n_b + labels_b[both])
    return np.bincount(pairs // n_b, minlength=n_a), np.bincount(pairs % n_b, minlength=n_b)


def _one_to_one(
    labels_a: np.ndarray, n_a: int, judged_a: np.ndarray,
    labels_b: np.ndarray, n_b: int, judged_b: np.ndarray,
) -> bool:
    """Whether every judged label of each side overlaps exactly one label of the other (index 0: none).

    ``judged_*`` says, per label, whether it must be matched; a label that is not
    judged still counts as a partner of the other side's labels."""
    partners_a, partners_b = _partners(labels_a, n_a, labels_b, n_b)
    return bool((partners_a[judged_a] == 1).all() and (partners_b[judged_b] == 1).all())


def _holes_match(
    bg_a: np.ndarray, n_a: int, judged_a: np.ndarray, bg_b: np.ndarray, n_b: int, hole_b: np.ndarray
) -> bool:
    """Whether every judged hole of ``a`` overlaps exactly one background component of ``b``, a hole."""
    both = (bg_a > 0) & (bg_b > 0)
    pairs = np.unique(bg_a[both].astype(np.int64) * n_b + bg_b[both])
    of_a, of_b = pairs // n_b, pairs % n_b
    if not (np.bincount(of_a, minlength=n_a)[judged_a] == 1).all():
        return False  # a hole filled, split, or grown into another background component
    return bool(hole_b[of_b[judged_a[of_a]]].all())  # ... or opened to the border


def _judged_components(
    print_a: np.ndarray, print_b: np.ndarray, near: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    """Per print: the number of labels, the 8-connected foreground labels, and per label whether it is
    judged (not lying wholly in the ``near`` border band; the background label 0 never is)."""
    n_a, fg_a = _labels(print_a, 8)
    n_b, fg_b = _labels(print_b, 8)
    judged_a = ~_ignorable(fg_a, n_a, near)
    judged_b = ~_ignorable(fg_b, n_b, near)
    judged_a[0] = judged_b[0] = False
    return n_a, fg_a, judged_a, n_b, fg_b, judged_b


def topology_change(print_a: np.ndarray, print_b: np.ndarray, border_px: int) -> Topology:
    """``"same"``, or what changed: ``"components"`` (bridged, pinched, vanished, appeared), ``"holes"``."""
    shape = (int(print_a.shape[0]), int(print_a.shape[1]))
    near = _near_border(shape, border_px)
    n_a, fg_a, judged_a, n_b, fg_b, judged_b = _judged_components(print_a, print_b, near)
    if not _one_to_one(fg_a, n_a, judged_a, fg_b, n_b, judged_b):
        return "components"
    # holes: background components (4-connected, the dual of 8) that do not touch the border;
    # every background component is a partner, but only holes must be matched, and to a hole
    n_a, bg_a = _labels(~print_a, 4)
    n_b, bg_b = _labels(~print_b, 4)
    edge = _near_border(shape, 1)
    hole_a = np.ones(n_a, dtype=bool)
    hole_a[np.unique(bg_a[edge])] = False
    hole_b = np.ones(n_b, dtype=bool)
    hole_b[np.unique(bg_b[edge])] = False
    hole_a[0] = hole_b[0] = False
    if not hole_a.any() and not hole_b.any():
        return "same"
    judged_a = hole_a & ~_ignorable(bg_a, n_a, near)
    judged_b = hole_b & ~_ignorable(bg_b, n_b, near)
    if not (_holes_match(bg_a, n_a, judged_a, bg_b, n_b, hole_b)
            and _holes_match(bg_b, n_b, judged_b, bg_a, n_a, hole_a)):
        return "holes"
    return "same"


def _largest_per_label(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Per label (index 0 included), the largest of ``values`` over its pixels (0 for an empty label)."""
    out = np.zeros(n, dtype=np.float32)
    np.maximum.at(out, labels.ravel(), values.ravel())
    return out


def marginal_components(
    printed: np.ndarray, labels: np.ndarray, candidates: np.ndarray, drawn: np.ndarray, width_fraction: float
) -> np.ndarray:
    """Which ``candidates`` (labels of ``printed``) are marginal features of ``drawn`` (the mask, bool).

    A component is marginal when at least half of its pixels lie on drawn
    features and its largest inscribed radius is at most ``width_fraction`` of
    the largest of the drawn features it lies on. Returns a bool per candidate."""
    if len(candidates) == 0:
        return np.zeros(0, dtype=bool)
    n = int(labels.max()) + 1
    n_d, drawn_labels = _labels(drawn, 8)
    drawn_radius = _largest_per_label(
        cv2.distanceTransform(drawn.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5), drawn_labels, n_d)
    radius = _largest_per_label(
        cv2.distanceTransform(printed.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5), labels, n)
    area = np.bincount(labels.ravel(), minlength=n)
    on_drawn = np.bincount(labels[drawn], minlength=n)
    under = np.zeros(n, dtype=np.float32)  # the largest drawn feature under each component
    np.maximum.at(under, labels[drawn], drawn_radius[drawn_labels[drawn]])
    chosen = np.asarray(candidates, dtype=np.int64)
    return (2 * on_drawn[chosen] >= area[chosen]) & (radius[chosen] <= width_fraction * under[chosen])


def _without_marginal(
    print_a: np.ndarray, print_b: np.ndarray, drawn: np.ndarray, border_px: int, width_fraction: float
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | None:
    """Both prints without the components that vanished from ``a`` or appeared in ``b`` and are marginal.

    None when some other component change is there (a bridge, a pinch, a component
    matched to several) or a vanished or appeared component is not marginal."""
    near = _near_border((int(print_a.shape[0]), int(print_a.shape[1])), border_px)
    n_a, fg_a, judged_a, n_b, fg_b, judged_b = _judged_components(print_a, print_b, near)
    partners_a, partners_b = _partners(fg_a, n_a, fg_b, n_b)
    if (partners_a[judged_a] > 1).any() or (partners_b[judged_b] > 1).any():
        return None
    vanished = np.flatnonzero(judged_a & (partners_a == 0))
    appeared = np.flatnonzero(judged_b & (partners_b == 0))
    if not (marginal_components(print_a, fg_a, vanished, drawn, width_fraction).all()
            and marginal_components(print_b, fg_b, appeared, drawn, width_fraction).all()):
        return None
    return (print_a & ~np.isin(fg_a, vanished), print_b & ~np.isin(fg_b, appeared),
            (len(vanished), len(appeared)))


def judge_prints(
    print_a: np.ndarray, print_b: np.ndarray, *, tolerance_px: int, mismatch_max_px: int, edge_band_px: int,
    drawn: np.ndarray | None = None, marginal_width_fraction: float = 0.0,
) -> PrintJudgement:
    """Two binarised prints of one overlap (same shape, bool): see the module docstring.

    ``drawn`` (bool, the mask of the overlap, where both masks agree) with
    ``marginal_width_fraction`` > 0 forgives marginal features that vanish or
    appear; the caller passes them only for results of different process conditions."""
    diff = print_a != print_b
    if not diff.any():
        return PrintJudgement(True, 0, "same" if edge_band_px > 0 else "not_checked", 0.0)
    if edge_band_px <= 0:
        mismatch = int(np.count_nonzero(_open(diff, tolerance_px)))
        return PrintJudgement(mismatch <= mismatch_max_px, mismatch, "not_checked", float("nan"))
    far = np.maximum(edge_distance(print_a), edge_distance(print_b))
    edge_px = float(far[diff].max())
    mismatch = int(np.count_nonzero(_open(diff & (far > edge_band_px), tolerance_px)))
    topology = topology_change(print_a, print_b, edge_band_px)
    if topology == "components" and drawn is not None and marginal_width_fraction > 0:
        cleaned = _without_marginal(print_a, print_b, drawn, edge_band_px, marginal_width_fraction)
        if cleaned is not None:
            rest_a, rest_b, forgiven = cleaned
            if topology_change(rest_a, rest_b, edge_band_px) == "same":
                rest = (rest_a != rest_b) & (np.maximum(edge_distance(rest_a), edge_distance(rest_b))
                                             > edge_band_px)
                mismatch = int(np.count_nonzero(_open(rest, tolerance_px)))
                return PrintJudgement(mismatch <= mismatch_max_px, mismatch, "marginal", edge_px, forgiven)
    return PrintJudgement(topology == "same" and mismatch <= mismatch_max_px, mismatch, topology, edge_px)
