"""The topology of a binarised print: its components and holes, and which of them a process change may take.

A re-simulation at another dose or focus moves print edges; it does not bridge,
pinch off, make vanish or make appear a feature, nor fill or open a hole. So two
prints of one overlap keep one topology when

- their foreground components (8-connected) are matched one to one (each
  component of one overlaps exactly one of the other, and vice versa), and
- so are their holes (4-connected background components that do not touch the
  overlap's border);

a component or hole lying wholly within ``border_px`` of the overlap's border is
left out, since most of it lies outside the window and its fate cannot be judged
there.

**Marginal features.** A feature at the resolution limit may print at one dose
or focus and not at another. A component is *marginal* when at least half of it
lies on a drawn feature and its printed half-width (largest inscribed radius) is
at most a given fraction of the drawn features' under it; a print in free space
(a sidelobe), a feature printing near its drawn size, a bridge, a pinch and a
changed hole never are.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

#: ``"same"``, ``"marginal"`` (only marginal features differ), what changed (``"components"``,
#: ``"holes"``), or ``"not_checked"``
Topology = Literal["same", "marginal", "components", "holes", "not_checked"]


def edge_distance(binary: np.ndarray) -> np.ndarray:
    """Per pixel, the distance (px) to the nearest pixel of the other value: 1 next to an edge."""
    inside = binary.astype(np.uint8)
    to_empty = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_5)
    to_print = cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_5)
    return np.where(binary, to_empty, to_print)


def near_border(shape: tuple[int, int], band_px: int) -> np.ndarray:
    """The pixels of ``shape`` within ``band_px`` of its border (bool map; none for 0)."""
    near = np.zeros(shape, dtype=bool)
    if band_px > 0:
        near[:band_px, :] = near[-band_px:, :] = True
        near[:, :band_px] = near[:, -band_px:] = True
    return near


def _labels(binary: np.ndarray, connectivity: int) -> tuple[int, np.ndarray]:
    n, labels = cv2.connectedComponents(binary.astype(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S)
    return int(n), labels


def _ignorable(labels: np.ndarray, n: int, near: np.ndarray) -> np.ndarray:
    """Per label, whether all its pixels lie within the border band (index 0 unused)."""
    total = np.bincount(labels.ravel(), minlength=n)
    at_border = np.bincount(labels[near], minlength=n)
    return (total == at_border) & (total > 0)


def _partners(
    labels_a: np.ndarray, n_a: int, labels_b: np.ndarray, n_b: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per label of each side, how many labels of the other side it overlaps (index 0: none)."""
    both = (labels_a > 0) & (labels_b > 0)
    pairs = np.unique(labels_a[both].astype(np.int64) * n_b + labels_b[both])
    return np.bincount(pairs // n_b, minlength=n_a), np.bincount(pairs % n_b, minlength=n_b)


def _one_to_one(
    labels_a: np.ndarray,
    n_a: int,
    judged_a: np.ndarray,
    labels_b: np.ndarray,
    n_b: int,
    judged_b: np.ndarray,
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
    near = near_border(shape, border_px)
    n_a, fg_a, judged_a, n_b, fg_b, judged_b = _judged_components(print_a, print_b, near)
    if not _one_to_one(fg_a, n_a, judged_a, fg_b, n_b, judged_b):
        return "components"
    # holes: background components (4-connected, the dual of 8) that do not touch the border;
    # every background component is a partner, but only holes must be matched, and to a hole
    n_a, bg_a = _labels(~print_a, 4)
    n_b, bg_b = _labels(~print_b, 4)
    edge = near_border(shape, 1)
    hole_a = np.ones(n_a, dtype=bool)
    hole_a[np.unique(bg_a[edge])] = False
    hole_b = np.ones(n_b, dtype=bool)
    hole_b[np.unique(bg_b[edge])] = False
    hole_a[0] = hole_b[0] = False
    if not hole_a.any() and not hole_b.any():
        return "same"
    judged_a = hole_a & ~_ignorable(bg_a, n_a, near)
    judged_b = hole_b & ~_ignorable(bg_b, n_b, near)
    if not (
        _holes_match(bg_a, n_a, judged_a, bg_b, n_b, hole_b)
        and _holes_match(bg_b, n_b, judged_b, bg_a, n_a, hole_a)
    ):
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
        cv2.distanceTransform(drawn.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5), drawn_labels, n_d
    )
    radius = _largest_per_label(
        cv2.distanceTransform(printed.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5), labels, n
    )
    area = np.bincount(labels.ravel(), minlength=n)
    on_drawn = np.bincount(labels[drawn], minlength=n)
    under = np.zeros(n, dtype=np.float32)  # the largest drawn feature under each component
    np.maximum.at(under, labels[drawn], drawn_radius[drawn_labels[drawn]])
    chosen = np.asarray(candidates, dtype=np.int64)
    return (2 * on_drawn[chosen] >= area[chosen]) & (radius[chosen] <= width_fraction * under[chosen])


def without_marginal(
    print_a: np.ndarray, print_b: np.ndarray, drawn: np.ndarray, border_px: int, width_fraction: float
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | None:
    """Both prints without the components that vanished from ``a`` or appeared in ``b`` and are marginal,
    with how many of each were taken out.

    None when some other component change is there (a bridge, a pinch, a component
    matched to several) or a vanished or appeared component is not marginal."""
    near = near_border((int(print_a.shape[0]), int(print_a.shape[1])), border_px)
    n_a, fg_a, judged_a, n_b, fg_b, judged_b = _judged_components(print_a, print_b, near)
    partners_a, partners_b = _partners(fg_a, n_a, fg_b, n_b)
    if (partners_a[judged_a] > 1).any() or (partners_b[judged_b] > 1).any():
        return None
    vanished = np.flatnonzero(judged_a & (partners_a == 0))
    appeared = np.flatnonzero(judged_b & (partners_b == 0))
    if not (
        marginal_components(print_a, fg_a, vanished, drawn, width_fraction).all()
        and marginal_components(print_b, fg_b, appeared, drawn, width_fraction).all()
    ):
        return None
    return (
        print_a & ~np.isin(fg_a, vanished),
        print_b & ~np.isin(fg_b, appeared),
        (len(vanished), len(appeared)),
    )
