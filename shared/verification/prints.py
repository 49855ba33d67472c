"""Judge two binarised prints of one overlap: what another dose or focus may change, and what it may not.

When the masks of two results agree on their overlap, their prints may still
differ: a re-simulation at another dose (+-5 %) or focus (+-60 nm) moves every
print edge by a few pixels (measured with ``bench/hybrid_bench.py``: tens to
about 1300 pixels of a 256 px clip beyond 2 px slivers). What such a
re-simulation does *not* change is the print's topology (:mod:`.topology`). A
bridge forming, a contact missing or a sidelobe printing is a process-window
hotspot, a result to score, not a duplicate.

So the prints are accepted when

1. **topology**: they keep one topology (:func:`.topology.topology_change`,
   features within ``edge_band_px`` of the overlap's border left out);
2. **edges**: the pixels where the prints differ, less those within
   ``edge_band_px`` of an edge of *both* prints, then less slivers up to
   ``2 * tolerance_px`` wide (:func:`.difference.drop_slivers`), number at most
   ``mismatch_max_px``.

``edge_band_px = 0`` is the plain check alone (2. with no band; no topology), as
the dedupe stage judges prints.

When the caller knows the two results were simulated under different process
conditions (``marginal_width_fraction`` > 0 and the ``drawn`` mask of the
overlap given), a component that vanishes or appears is forgiven when it is
marginal (:func:`.topology.marginal_components`: measured with
``bench/hybrid_bench.py``, 1-20 missed re-simulations per run lost or gained
one at +-40-60 nm defocus). The forgiven components are taken out of both
prints and the rest is judged as above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.verification.difference import drop_slivers
from shared.verification.topology import Topology, edge_distance, topology_change, without_marginal


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


def judge_prints(
    print_a: np.ndarray,
    print_b: np.ndarray,
    *,
    tolerance_px: int,
    mismatch_max_px: int,
    edge_band_px: int,
    drawn: np.ndarray | None = None,
    marginal_width_fraction: float = 0.0,
) -> PrintJudgement:
    """Two binarised prints of one overlap (same shape, bool): see the module docstring.

    ``drawn`` (bool, the mask of the overlap, where both masks agree) with
    ``marginal_width_fraction`` > 0 forgives marginal features that vanish or
    appear; the caller passes them only for results of different process conditions."""
    diff = print_a != print_b
    if not diff.any():
        return PrintJudgement(True, 0, "same" if edge_band_px > 0 else "not_checked", 0.0)
    if edge_band_px <= 0:
        mismatch = int(np.count_nonzero(drop_slivers(diff, tolerance_px)))
        return PrintJudgement(mismatch <= mismatch_max_px, mismatch, "not_checked", float("nan"))
    far = np.maximum(edge_distance(print_a), edge_distance(print_b))
    edge_px = float(far[diff].max())
    mismatch = int(np.count_nonzero(drop_slivers(diff & (far > edge_band_px), tolerance_px)))
    topology = topology_change(print_a, print_b, edge_band_px)
    if topology == "components" and drawn is not None and marginal_width_fraction > 0:
        cleaned = without_marginal(print_a, print_b, drawn, edge_band_px, marginal_width_fraction)
        if cleaned is not None:
            rest_a, rest_b, forgiven = cleaned
            if topology_change(rest_a, rest_b, edge_band_px) == "same":
                rest = (rest_a != rest_b) & (
                    np.maximum(edge_distance(rest_a), edge_distance(rest_b)) > edge_band_px
                )
                mismatch = int(np.count_nonzero(drop_slivers(rest, tolerance_px)))
                return PrintJudgement(mismatch <= mismatch_max_px, mismatch, "marginal", edge_px, forgiven)
    return PrintJudgement(topology == "same" and mismatch <= mismatch_max_px, mismatch, topology, edge_px)
