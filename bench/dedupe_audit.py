"""Every pair of the real set, whatever the arrival order: what the dedupe verifier would accept.

The core merges a result only into a candidate its store offers (a hash within
``hamming_radius`` sharing a band, or one of the ``profile_candidates`` nearest by
row and column profile) and only when the pixel check accepts it; which candidates
are offered depends on what arrived before. This audit leaves the store out: each
pair of clips of one layer from different window sets is verified as the core
verifies a hash candidate (the best shift) and as it verifies a profile candidate
(a shift no other agrees with nearly as well), and every acceptance is judged
(``pattern_judge``: one clip is the other's layout under the moved window). A wrong
acceptance becomes a false merge in an order where the store offers that pair, so
each is printed with its Hamming distance against the radius and its profile
distance with its rank among the set's clips.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from bench.dedupe_real import RealClip
from services.dedupe.core import DedupeCore, DedupeSettings
from services.dedupe.store_memory import InMemoryDedupeStore
from shared.contracts import SimResult
from shared.hashing import profile_distances
from shared.verification.windows import MaskSums, WindowMatch, search_reach


@dataclass(frozen=True)
class Accepted:
    """One pair from different window sets that the pixel check accepts."""

    a: RealClip
    b: RealClip
    match: WindowMatch
    unique: bool  # also accepted as a profile candidate (one shift only, no thin match)
    right: bool  # the judge finds the two clips windows of one layout


def audit_pairs(clips: list[RealClip], results: list[SimResult],
                judge: Callable[[RealClip, RealClip], bool], settings: DedupeSettings) -> list[Accepted]:
    """Verify every same-layer pair of ``clips`` (``results`` in the same order) from different window
    sets once, as a hash candidate and, where accepted, as a profile candidate; print the counts and
    each wrong acceptance. A set's own 17-31 px window counts as that set."""
    core = DedupeCore(InMemoryDedupeStore(), settings)
    prepared = [core.prepare(r) for r in results]
    reach = search_reach(prepared[0].mask_u8.shape, core.tolerances)
    sums = [MaskSums.of(p.mask_u8, reach) for p in prepared]
    pairs = [(i, j) for i, j in itertools.combinations(range(len(clips)), 2)
             if clips[i].family == clips[j].family
             and clips[i].group.removesuffix("-far") != clips[j].group.removesuffix("-far")]

    def verify(i: int, j: int, unique: bool) -> WindowMatch | None:
        """The core's pixel check of clip ``j`` against clip ``i`` (``unique``: as for a profile
        candidate)."""
        a, b = prepared[i], prepared[j]
        return core.verify_pair(a.mask_u8, a.print_binary, b.mask_u8, b.print_binary,
                                via="profile" if unique else "hash", sums=(sums[i], sums[j]))

    start = time.perf_counter()
    found: list[Accepted] = []
    for i, j in tqdm(pairs, desc="audit: pairs verified", unit="pair", mininterval=5.0, leave=False):
        match = verify(i, j, unique=False)
        if match is not None:
            also_unique = verify(i, j, unique=True) is not None
            found.append(Accepted(clips[i], clips[j], match, also_unique, judge(clips[i], clips[j])))
    seconds = time.perf_counter() - start
    hash_wrong = [f for f in found if not f.right]
    uniques = [f for f in found if f.unique]
    unique_wrong = [f for f in uniques if not f.right]
    print(f"\nevery pair, whatever the order: {len(pairs)} pairs of clips of one layer from different window "
          f"sets ({len(clips)} clips), each verified once ({seconds:.0f} s)")
    print(f"  accepted at the best shift (as a hash candidate): {len(found)}, of which judged to be windows "
          f"of one layout {len(found) - len(hash_wrong)}, wrong {len(hash_wrong)}")
    print(f"  accepted as a profile candidate (a unique shift, no thin match): {len(uniques)}, of which "
          f"judged to be windows of one layout {len(uniques) - len(unique_wrong)}, wrong {len(unique_wrong)}")
    if hash_wrong:
        by_id = {c.result_id: k for k, c in enumerate(clips)}
        pool = [p.item.profile for p in prepared]
        print(f"  wrong acceptances (hash radius {settings.hamming_radius} bits, "
              f"{settings.profile_candidates} profile candidates):")
        for f in hash_wrong:
            i, j = by_id[f.a.result_id], by_id[f.b.result_id]
            bits = prepared[i].item.distance_bits(prepared[j].item.perceptual)
            distances = profile_distances(pool[i], pool)
            distances[i] = np.inf
            rank = int(np.count_nonzero(distances < distances[j])) + 1
            m = f.match
            print(f"    {f.a.result_id} ~ {f.b.result_id}: shift {m.shift_px}, {m.matched_drawn_px} px drawn "
                  f"in both, drawn compared {m.drawn_compared_fraction:.3f}, as a profile candidate "
                  f"{'yes' if f.unique else 'no'}; Hamming {bits} bits, profile distance "
                  f"{distances[j]:.3f} (rank {rank} of {len(clips) - 1})")
    return found
