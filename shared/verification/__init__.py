"""Pixel verification: is one (mask, print) clip another seen through a shifted window?

One library for the dedupe stage's pixel check and the novelty stage's hybrid
confirmation; pure numpy and OpenCV, parameters passed in (no service settings).
Masks are 8-bit (or float [0, 1] where said), prints boolean, shifts ``(dx, dy)``
with ``b[y, x] == a[y + dy, x + dx]``.

- :mod:`.overlap`: overlap windows and areas, :func:`tied_shifts` (the
  translations at which the central mask template matches equally well).
- :mod:`.difference`: mask and print differences with slivers dropped.
- :mod:`.topology`: components and holes of a print, marginal features.
- :mod:`.prints`: :func:`judge_prints`, what another dose or focus may change.
- :mod:`.shifted_match`: :func:`verify_shifted_match` (masks, then prints, over
  each tied shift) with :class:`PixelTolerances`.
- :mod:`.windows`: :func:`verify_window_match` (every shift scored over its
  whole overlap, so sparse and rail-bound clips register; the strips outside
  the overlap checked for new drawn features), as the dedupe stage judges.
- :mod:`.blind_spot`: :func:`blind_spot_conflict`, a registration that hides a
  difference outside its overlap.
- :mod:`.descriptors`: :func:`register_by_descriptors` (ORB, RANSAC) when the
  translation search cannot register the masks.
- :mod:`.hashes`: hash distances of registered overlaps; :mod:`.coarse`: a
  cheap ranking of candidates by coarse cross-correlation, or by coarse
  agreement over the whole overlap.
"""

from __future__ import annotations

from shared.verification.blind_spot import blind_spot_conflict
from shared.verification.coarse import (
    OVERLAP_BLOCK_PX,
    CoarseMask,
    coarse_ncc,
    coarse_overlap_mismatch,
    coarse_overlap_mismatches,
    coarse_overlap_sums,
    coarse_phase_mismatch,
    downsample_mask,
)
from shared.verification.descriptors import (
    DescriptorParams,
    DescriptorRegistration,
    refine_shift,
    register_by_descriptors,
)
from shared.verification.difference import (
    MASK_TOLERANCE_LEVELS,
    drop_slivers,
    mask_difference,
    print_difference,
    sliver_free_mismatch,
)
from shared.verification.hashes import mask_hash_bits, print_hash_bits, print_phash
from shared.verification.overlap import (
    MAX_SHIFT_PX,
    Window,
    overlap_area,
    overlap_fraction,
    overlap_windows,
    tied_shifts,
)
from shared.verification.prints import PrintJudgement, judge_prints
from shared.verification.shifted_match import (
    PixelTolerances,
    ShiftedMatch,
    judge_windows,
    shifted_matches,
    verify_shifted_match,
)
from shared.verification.topology import Topology, edge_distance, marginal_components, topology_change
from shared.verification.windows import (
    MaskSums,
    StripFeatures,
    WindowMatch,
    search_reach,
    strip_features,
    verify_window_match,
)

__all__ = [
    "MASK_TOLERANCE_LEVELS",
    "MAX_SHIFT_PX",
    "OVERLAP_BLOCK_PX",
    "CoarseMask",
    "DescriptorParams",
    "DescriptorRegistration",
    "MaskSums",
    "PixelTolerances",
    "PrintJudgement",
    "ShiftedMatch",
    "StripFeatures",
    "Topology",
    "Window",
    "WindowMatch",
    "blind_spot_conflict",
    "coarse_ncc",
    "coarse_overlap_mismatch",
    "coarse_overlap_mismatches",
    "coarse_overlap_sums",
    "coarse_phase_mismatch",
    "downsample_mask",
    "drop_slivers",
    "edge_distance",
    "judge_prints",
    "judge_windows",
    "marginal_components",
    "mask_difference",
    "mask_hash_bits",
    "overlap_area",
    "overlap_fraction",
    "overlap_windows",
    "print_difference",
    "print_hash_bits",
    "print_phash",
    "refine_shift",
    "register_by_descriptors",
    "search_reach",
    "shifted_matches",
    "sliver_free_mismatch",
    "strip_features",
    "tied_shifts",
    "topology_change",
    "verify_shifted_match",
    "verify_window_match",
]
