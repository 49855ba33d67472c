"""Hybrid duplicate confirmation benchmark: re-simulations the dedupe stage misses.

Data (``toolkit.litho.FarmGenerator``, one seed): ``--layouts`` layouts form the
library (nominal window). Each is re-simulated once with a large window shift
(the larger axis moved by 20-48 px at 256 px, the other by up to 48 px), another
dose (+-5 %) and another focus: the "true re-simulations". ``--distinct`` new
layouts of the same families (nominal) are the "distinct" queries; ``--defects``
library layouts are re-simulated with a small shift *and a mask defect*: those
must never be confirmed. So must the *print-only hotspots* (``--print-only``
layouts, default ``--defects``): a layout's clean mask with the print of a
bridge, a merged or missing contact or a printed sidelobe (same window, dose
and focus), which no mask check can see; and the re-simulations that are
confirmed, with one topology edit to the print inside the overlap (a feature
removed, a 3 px sidelobe blob, a 3 px bridge), the mask unchanged. The missed
re-simulations and the print-only hotspots are also run with
``print_edge_band_px`` 0 (no topology check) as the baseline of the same run,
and the missed re-simulations are split by how their print changed at the true
shift (same topology; only marginal features came or went; a real topology
change) and by defocus. Every clip carries its process condition (dose, focus)
from its labels, as the service reads them: between a re-simulation and its
entry ``across_process`` applies (default ``mask_only``: agreeing masks confirm,
the print's changes are recorded; ``--across-process marginal``: the print is
judged, marginal features forgiven). The other policy and the strict check
(``marginal``, fraction 0) are baselines of the same run.

Steps, one run, nothing asserted:
0. the gate: ``--gate calibrated`` (default) reads it off re-simulation pairs of
   ``--calibration-layouts`` *other* layouts (seed + 1000) with
   ``toolkit.calibration.near_identity``, as ``lithowatch calibrate`` does for the
   thresholds file; ``--gate 0.95`` fixes it;
1. the dedupe core (``InMemoryDedupeStore``) sees the library, then the queries:
   which re-simulations does it miss?
2. the encoder (``--model``, default the untrained ``resnet18``, ``mask,print``,
   64 px) embeds all; similarity of each query to its true library entry / to its
   nearest entry; where the true entry ranks (the retrieval bound of a pool);
3. the hybrid confirmer on the missed re-simulations, the distinct queries and
   the defective ones, with why each missed re-simulation was not confirmed
   (below the gate, not in the pool, ranked out by the coarse NCC, refused on
   pixels); plus an ungated stress test: every distinct query against its
   nearest *same-family* library entry, through each path alone;
4. cost per result (ms) of each path, next to the encoder's own cost.

Other work shares this 2-core machine: timings are pessimistic.

Example (an encoder trained on re-simulations with large shifts, see the
page docs/hybrid-confirmation.md)::

    python bench/hybrid_bench.py --layouts 120 --distinct 100 --defects 30 --model CKPT --seed 7
    python bench/hybrid_bench.py --layouts 400 --distinct 200 --defects 40 --model CKPT --seed 23
    python bench/hybrid_bench.py ... --families routing   # a family the encoder never saw
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.dedupe.core import DedupeCore
from services.dedupe.store_memory import InMemoryDedupeStore
from services.novelty.confirm import (
    Clip,
    ConfirmSettings,
    coarse_mask,
    coarse_score,
    confirm_pair,
    descriptor_path,
    hash_path,
    process_of,
)
from shared.contracts import SimResult, UniqueResult
from shared.errors import ContractError
from shared.imageref import make_image_ref
from shared.index.thresholds import NearIdentityGate
from shared.model.checkpoint import load_encoder
from shared.model.encoder import Encoder, build_untrained
from shared.verification import judge_prints, overlap_windows, topology_change
from toolkit.calibration.near_identity import near_identity_gate
from toolkit.litho import ClipSample, FarmGenerator, Variant, applicable_defects
from toolkit.litho.families import FAMILIES

DEFOCUS_NM = (-60.0, -40.0, -20.0, 20.0, 40.0, 60.0)
# defects that change the print's topology (bridge, contact gone or merged, a blob printed)
PRINT_ONLY_DEFECTS = ("bridge", "missing_contact", "merged_contact", "sidelobe")
EDITS = ("missing", "sidelobe", "bridge")


def large_shift(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    major = int(rng.integers(lo, hi + 1)) * int(rng.choice([-1, 1]))
    minor = int(rng.integers(-hi, hi + 1))
    return (major, minor) if rng.random() < 0.5 else (minor, major)


def to_result(sample: ClipSample, result_id: str) -> SimResult:
    return SimResult(
        result_id=result_id,
        nm_per_px=sample.nm_per_px,
        mask=make_image_ref(sample.mask),
        simulated=make_image_ref(sample.simulated),
        labels=dict(sample.labels),
        produced_at=datetime.now(UTC),
    )


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - started) * 1000.0


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def resimulation(rng: np.random.Generator, lo: int, hi: int) -> Variant:
    """A re-simulation as the farm makes them: a large window shift, another dose and focus."""
    return Variant(
        shift_px=large_shift(rng, lo, hi),
        dose=round(float(rng.uniform(0.95, 1.05)), 3),
        defocus_nm=float(rng.choice(DEFOCUS_NM)),
    )


def print_only_defect(
    farm: FarmGenerator, layout: Any, group: str, variant: Variant, defect: str
) -> ClipSample:
    """The layout's *clean* mask with the print of ``defect`` (same window, dose and focus): a print-only
    hotspot, which no mask check can see."""
    defective = farm.render(layout, group, variant, defect)
    clean_mask, _ = farm.simulate_window(layout, variant, variant.dose)
    labels = {**defective.labels, "print_only": True}
    return ClipSample(defective.id + "-p", clean_mask, defective.simulated, defective.nm_per_px, labels)


def edited_print(
    printed: np.ndarray, edit: str, rng: np.random.Generator, window: tuple[slice, slice]
) -> np.ndarray | None:
    """``printed`` with one topology edit (``missing``, ``sidelobe`` or ``bridge``) well inside ``window``
    (the part of the clip its library entry also shows: outside it nothing can be compared), or None when
    the print offers no site there. The mask stays as it is: these are print-only hotspots."""
    binary = printed > 0.5
    margin = 12
    inside = np.zeros(binary.shape, dtype=bool)
    inside[window] = True
    inside = cv2.erode(inside.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8),
                       borderValue=0) > 0
    n, labels = cv2.connectedComponents(binary.astype(np.uint8), connectivity=8)
    out = binary.copy()
    order = [int(i) for i in rng.permutation(np.arange(1, n))]
    if edit == "missing":  # a feature (contact, island) does not print
        for i in order:
            ys, xs = np.nonzero(labels == i)
            if inside[ys, xs].all():
                out[ys, xs] = False
                return out.astype(np.float32)
        return None
    if edit == "sidelobe":  # a blob prints in free space (radius 3 px: 24-28 nm at 4 nm/px)
        to_print = cv2.distanceTransform((~binary).astype(np.uint8), cv2.DIST_L2, 5)
        free = (to_print >= 10) & inside
        ys, xs = np.nonzero(free)
        if len(ys) == 0:
            return None
        k = int(rng.integers(len(ys)))
        cv2.circle(out.view(np.uint8), (int(xs[k]), int(ys[k])), 3, 1, -1)
        return out.astype(np.float32)
    if edit == "bridge":  # two neighbouring features joined by a 3 px wide neck
        for i in order:
            ys, xs = np.nonzero(labels == i)
            dist = cv2.distanceTransform((labels != i).astype(np.uint8), cv2.DIST_L2, 5)
            other = (labels > 0) & (labels != i) & (dist <= 16) & inside
            if not other.any():
                continue
            oy, ox = np.unravel_index(int(np.argmin(np.where(other, dist, np.inf))), dist.shape)
            j = int(np.argmin((ys - oy) ** 2 + (xs - ox) ** 2))
            if not inside[ys[j], xs[j]]:
                continue
            cv2.line(out.view(np.uint8), (int(xs[j]), int(ys[j])), (int(ox), int(oy)), 1, 3)
            return out.astype(np.float32)
        return None
    raise ValueError(edit)


def chosen_families(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(args.families.split(",")) if args.families else FAMILIES


def calibrated_gate(
    encoder: Encoder, seed: int, n_layouts: int, args: argparse.Namespace, quantile: float
) -> NearIdentityGate:
    """The gate read off a calibration set of *other* layouts (its own seed), never the test data."""
    farm = FarmGenerator(seed=seed, families=chosen_families(args))
    rng = np.random.default_rng(seed + 1)
    samples: list[ClipSample] = []
    for _ in tqdm(range(n_layouts), desc="gate calibration set"):
        layout = farm.new_layout()
        group = farm.group_id(layout)
        samples.append(farm.render(layout, group))
        for _ in range(2):
            samples.append(farm.render(layout, group, resimulation(rng, args.min_shift, args.max_shift)))
    vectors = encoder.embed(
        [s.mask for s in samples], [s.simulated for s in samples], [s.nm_per_px for s in samples]
    )
    return near_identity_gate(vectors, [dict(s.labels) for s in samples], quantile=quantile)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", type=int, default=200)
    parser.add_argument("--distinct", type=int, default=150)
    parser.add_argument("--defects", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--families", default=None,
                        help="comma-separated layout families of every set (default: all)")
    parser.add_argument("--min-shift", type=int, default=20)
    parser.add_argument("--max-shift", type=int, default=48)
    parser.add_argument(
        "--gate", default="calibrated",
        help="near_identity_similarity: a number, or 'calibrated' (default): the gate"
        " toolkit.calibration.near_identity reads off re-simulation pairs of a separate calibration"
        " set (another seed), as lithowatch calibrate does for the thresholds file",
    )
    parser.add_argument("--calibration-layouts", type=int, default=60,
                        help="layouts of the gate's calibration set (each nominal + 2 re-simulations)")
    parser.add_argument("--quantile", type=float, default=0.01, help="quantile of the calibrated gate")
    parser.add_argument(
        "--pool", type=int, default=None, help="candidate_pool (default: the settings' default)"
    )
    parser.add_argument("--model", type=Path, default=None, help="encoder checkpoint (default: untrained)")
    parser.add_argument("--print-edge-band", type=int, default=None,
                        help="print_edge_band_px (default: the settings' default); the missed re-sims and the"
                        " print-only hotspots are also run with 0 (no topology check) as the baseline")
    parser.add_argument("--print-only", type=int, default=None,
                        help="layouts whose print-only hotspots are made (default: --defects)")
    parser.add_argument("--marginal-width-fraction", type=float, default=None,
                        help="marginal_width_fraction (default: the settings' default)")
    parser.add_argument("--across-process", choices=("marginal", "mask_only"), default=None,
                        help="across_process (default: the settings' default)")
    args = parser.parse_args()
    overrides: dict[str, Any] = {}
    if args.across_process is not None:
        overrides["across_process"] = args.across_process
    if args.marginal_width_fraction is not None:
        overrides["marginal_width_fraction"] = args.marginal_width_fraction

    if args.print_edge_band is not None:
        overrides["print_edge_band_px"] = args.print_edge_band
    if args.pool is not None:
        overrides["candidate_pool"] = args.pool
    encoder = (
        build_untrained("resnet18", "mask,print", 64) if args.model is None else load_encoder(args.model)
    )
    gate_note = "fixed"
    if args.gate == "calibrated":
        found_gate = calibrated_gate(encoder, args.seed + 1000, args.calibration_layouts, args, args.quantile)
        overrides["near_identity_similarity"] = found_gate.similarity
        gate_note = (
            f"calibrated: q{args.quantile:g} of {found_gate.n_pairs} re-simulation pairs of"
            f" {args.calibration_layouts} other layouts (seed {args.seed + 1000});"
            f" pair min {found_gate.pair_min}, median {found_gate.pair_median}"
        )
    else:
        overrides["near_identity_similarity"] = float(args.gate)
    settings = ConfirmSettings(**overrides)
    rng = np.random.default_rng(args.seed + 1)
    farm = FarmGenerator(seed=args.seed, families=chosen_families(args))

    library: list[ClipSample] = []
    resims: list[ClipSample] = []
    resim_shifts: list[tuple[int, int]] = []
    resim_focus: list[float] = []
    defective: list[ClipSample] = []
    layouts = []
    for i in tqdm(range(args.layouts), desc="library + re-simulations"):
        layout = farm.new_layout()
        group = farm.group_id(layout)
        layouts.append((layout, group))
        library.append(farm.render(layout, group))
        variant = resimulation(rng, args.min_shift, args.max_shift)
        resims.append(farm.render(layout, group, variant))
        resim_shifts.append(variant.shift_px)
        resim_focus.append(abs(variant.defocus_nm))
        if i < args.defects:
            small = Variant(shift_px=(int(rng.integers(-8, 9)), int(rng.integers(-8, 9))))
            options = applicable_defects(layout, farm.window_nm(small.shift_px), farm.rng)
            if options:
                with contextlib.suppress(ContractError):  # no defect site this time: skip the layout
                    defective.append(farm.render(layout, group, small, str(farm.rng.choice(options))))
    new_layouts = (farm.new_layout() for _ in tqdm(range(args.distinct), desc="distinct layouts"))
    distinct = [farm.render(layout, farm.group_id(layout)) for layout in new_layouts]
    # print-only hotspots: a library layout's clean mask, the print of a defect (same small shift,
    # the defect's dose); made last, so every other set is the same as without them
    hotspot_rng = np.random.default_rng(args.seed + 2)
    print_only: list[ClipSample] = []
    print_only_of: list[int] = []
    n_print_only = args.defects if args.print_only is None else args.print_only
    for i in tqdm(range(min(n_print_only, len(layouts))), desc="print-only hotspots"):
        layout, group = layouts[i]
        small = Variant(shift_px=(int(hotspot_rng.integers(-8, 9)), int(hotspot_rng.integers(-8, 9))))
        options = [d for d in applicable_defects(layout, farm.window_nm(small.shift_px), farm.rng)
                   if d in PRINT_ONLY_DEFECTS]
        if options:
            with contextlib.suppress(ContractError):
                print_only.append(print_only_defect(farm, layout, group, small,
                                                    str(hotspot_rng.choice(options))))
                print_only_of.append(i)

    # 1. what the dedupe stage misses
    dedupe = DedupeCore(InMemoryDedupeStore())
    dedupe.process_batch([to_result(s, f"lib-{i}") for i, s in enumerate(library)])
    outcomes = dedupe.process_batch([to_result(s, f"resim-{i}") for i, s in enumerate(resims)])
    missed = [i for i, o in enumerate(outcomes) if isinstance(o, UniqueResult)]
    defect_outcomes = dedupe.process_batch([to_result(s, f"defect-{i}") for i, s in enumerate(defective)])
    defects_unique = sum(isinstance(o, UniqueResult) for o in defect_outcomes)

    # 2. embeddings
    lib_vectors = encoder.embed(
        [s.mask for s in library], [s.simulated for s in library], [s.nm_per_px for s in library]
    )
    everything = resims + distinct + defective + print_only
    query_vectors, embed_ms = timed(
        lambda: encoder.embed(
            [s.mask for s in everything], [s.simulated for s in everything], [s.nm_per_px for s in everything]
        )
    )
    embed_ms /= max(1, len(everything))
    sims = query_vectors @ lib_vectors.T
    n_r, n_d = len(resims), len(distinct)
    true_sim = [float(sims[i, i]) for i in range(n_r)]
    top1_is_true = sum(int(np.argmax(sims[i])) == i for i in range(n_r))
    true_rank = [int((sims[i] > sims[i, i]).sum()) for i in range(n_r)]
    distinct_top = [float(sims[n_r + j].max()) for j in range(n_d)]
    families = np.array([s.labels["family"] for s in library])
    same_family_top: list[tuple[float, int]] = []
    for j, sample in enumerate(distinct):
        row = np.where(families == sample.labels["family"], sims[n_r + j], -2.0)
        same_family_top.append((float(row.max()), int(np.argmax(row))))

    def as_clip(sample: ClipSample, printed: np.ndarray | None = None) -> Clip:
        """The clip with its process condition (dose, focus) from its labels, as the service reads them."""
        return Clip(sample.mask, sample.simulated if printed is None else printed,
                    process_of(sample.labels, settings.process_labels))

    clips_lib = [as_clip(s) for s in library]
    clips_q = [as_clip(s) for s in everything]

    coarse_lib = [coarse_mask(s.mask, settings) for s in library]

    gate = settings.near_identity_similarity
    ranking_ms: list[float] = []
    best_ncc: dict[str, list[float]] = {"true": [], "other": []}  # top coarse NCC of each query's pool
    ncc_rank: list[int] = []  # rank of the true entry in the pool after the coarse NCC ranking
    misses: dict[str, int] = {"below gate": 0, "not in pool": 0, "ranked out": 0, "pixels refused": 0}

    def hybrid(q: int, true_li: int | None = None, settings: ConfirmSettings = settings
               ) -> tuple[int | None, str, float]:
        """Gated confirmation as the service does it: (library index, path, ms).

        The service's FAISS search for the pool (``candidate_pool`` instead of the
        novelty stage's k nearest) is not in the figure."""
        started = time.perf_counter()
        order = np.argsort(-sims[q])[: settings.candidate_pool]
        pool = [int(li) for li in order if sims[q, li] >= gate]
        query_coarse = coarse_mask(clips_q[q].mask, settings)
        scores = {li: coarse_score(coarse_lib[li], query_coarse, settings) for li in pool}
        ranked = sorted(pool, key=lambda li: -scores[li])
        ranking_ms.append((time.perf_counter() - started) * 1000.0)
        if ranked:
            best_ncc["true" if ranked[0] == true_li else "other"].append(scores[ranked[0]])
        if true_li is not None and true_li in ranked:
            ncc_rank.append(ranked.index(true_li))
        for li in ranked[: settings.max_candidates]:
            found = confirm_pair(clips_lib[li], clips_q[q], settings)
            if found is not None:
                return li, found.path, (time.perf_counter() - started) * 1000.0
        if true_li is not None:
            if sims[q, true_li] < gate:
                misses["below gate"] += 1
            elif true_li not in pool:
                misses["not in pool"] += 1
            elif true_li not in ranked[: settings.max_candidates]:
                misses["ranked out"] += 1
            else:
                misses["pixels refused"] += 1
        return None, "-", (time.perf_counter() - started) * 1000.0

    # 3. hybrid on missed re-simulations, distinct, defective
    rows: dict[str, list[tuple[int | None, str, float]]] = {
        "missed re-simulations": [hybrid(i, i) for i in tqdm(missed, desc="hybrid: missed re-sims")],
        "distinct layouts": [hybrid(n_r + j) for j in tqdm(range(n_d), desc="hybrid: distinct")],
        "defective re-sims": [hybrid(n_r + n_d + k) for k in range(len(defective))],
        "print-only hotspots": [hybrid(n_r + n_d + len(defective) + k) for k in range(len(print_only))],
    }
    # the baselines in the same run: the print check without the topology-aware edge band, and the
    # topology check with no marginal feature forgiven
    baseline = settings.model_copy(update={"print_edge_band_px": 0})
    strict = settings.model_copy(update={"marginal_width_fraction": 0.0, "across_process": "marginal"})
    counted = (len(ranking_ms), len(best_ncc["true"]), len(best_ncc["other"]))
    baseline_rows = {
        "missed re-simulations": [hybrid(i, None, baseline) for i in missed],
        "print-only hotspots": [hybrid(n_r + n_d + len(defective) + k, None, baseline)
                                for k in range(len(print_only))],
        "missed, strict": [hybrid(i, None, strict) for i in missed],
        "missed, marginal": [hybrid(i, None, settings.model_copy(update={"across_process": "marginal"}))
                             for i in missed],
    }
    del ranking_ms[counted[0]:], best_ncc["true"][counted[1]:], best_ncc["other"][counted[2]:]
    baseline_right = sum(li == i for (li, _, _), i in zip(baseline_rows["missed re-simulations"], missed,
                                                           strict=True))
    strict_right = sum(li == i for (li, _, _), i in zip(baseline_rows["missed, strict"], missed, strict=True))
    marginal_right = sum(li == i for (li, _, _), i in zip(baseline_rows["missed, marginal"], missed,
                                                           strict=True))
    # how each missed re-sim's print changed at the true shift (the window shift is known): "same"
    # topology, only "marginal" features came or went, or a real topology change ("components",
    # "holes"), which the check scores as a process-window hotspot
    def print_change(i: int) -> str:
        in_lib, in_q = overlap_windows(clips_lib[i].mask.shape, *resim_shifts[i])
        a, b = clips_lib[i].print_binary[in_lib], clips_q[i].print_binary[in_q]
        band = max(1, settings.print_edge_band_px)
        found = topology_change(a, b, band)
        if found == "components" and settings.marginal_width_fraction > 0:
            found = judge_prints(a, b, tolerance_px=settings.print_tolerance_px, mismatch_max_px=1 << 30,
                                 edge_band_px=band, drawn=clips_lib[i].mask_u8[in_lib] > 127,
                                 marginal_width_fraction=settings.marginal_width_fraction).topology
        return found

    change = {i: print_change(i) for i in missed}
    kept = {i for i in missed if change[i] == "same"}
    missed_rows = list(zip(rows["missed re-simulations"], missed, strict=True))
    confirmed_right = sum(li == i for (li, _, _), i in missed_rows)
    confirmed_wrong = sum(li is not None and li != i for (li, _, _), i in missed_rows)

    # ungated stress: every path alone, true pairs and nearest same-family distinct pairs
    path_stats: dict[str, dict[str, list[float]]] = {}

    def both(library_clip: Clip, query_clip: Clip, s: ConfirmSettings) -> tuple[bool, dict[str, Any]]:
        return confirm_pair(library_clip, query_clip, s) is not None, {}

    for name, fn in (("hash", hash_path), ("descriptors", descriptor_path), ("hash>desc", both)):
        stats: dict[str, list[float]] = {"true_ok": [], "ms": [], "false_ok": [], "defect_ok": []}
        for i in tqdm(range(n_r), desc=f"{name} path alone: true"):
            (ok, _), ms = timed(lambda i=i, fn=fn: fn(clips_lib[i], clips_q[i], settings))
            stats["true_ok"].append(float(ok))
            stats["ms"].append(ms)
        for j in tqdm(range(n_d), desc=f"{name} path alone: distinct"):
            li = same_family_top[j][1]
            (ok, _), ms = timed(lambda j=j, li=li, fn=fn: fn(clips_lib[li], clips_q[n_r + j], settings))
            stats["false_ok"].append(float(ok))
            stats["ms"].append(ms)
        for k in range(len(defective)):
            li = next(i for i, s in enumerate(library) if s.labels["group"] == defective[k].labels["group"])
            ok, _ = fn(clips_lib[li], clips_q[n_r + n_d + k], settings)
            stats["defect_ok"].append(float(ok))
        stats["print_only_ok"] = [
            float(fn(clips_lib[li], clips_q[n_r + n_d + len(defective) + k], settings)[0])
            for k, li in enumerate(print_only_of)
        ]
        path_stats[name] = stats

    # hard negatives on the door this opens: re-sims at another dose and focus that ARE confirmed
    # (ungated, against their own entry), with one topology edit to the print and the mask unchanged
    edit_rng = np.random.default_rng(args.seed + 3)
    edit_counts: dict[str, list[int]] = {e: [0, 0, 0, 0] for e in EDITS}  # made, confirmed, old, strict
    for i in tqdm(range(n_r), desc="edited prints"):
        if confirm_pair(clips_lib[i], clips_q[i], settings) is None:
            continue
        for edit in EDITS:
            edited = edited_print(resims[i].simulated, edit, edit_rng,
                                  overlap_windows(clips_lib[i].mask.shape, *resim_shifts[i])[1])
            if edited is None:
                continue
            hot = as_clip(resims[i], edited)
            edit_counts[edit][0] += 1
            edit_counts[edit][1] += confirm_pair(clips_lib[i], hot, settings) is not None
            edit_counts[edit][2] += confirm_pair(clips_lib[i], hot, baseline) is not None
            edit_counts[edit][3] += confirm_pair(clips_lib[i], hot, strict) is not None

    # 4. report
    print()
    print(
        f"data: {args.layouts} library layouts, {n_r} re-simulations"
        f" (shift {args.min_shift}-{args.max_shift} px,"
        f" dose 0.95-1.05, defocus +-20..60 nm), {n_d} distinct layouts, {len(defective)} defective re-sims"
        f" (seed {args.seed}, families {args.families or 'all'};"
        f" 2-core machine shared with other work: timings pessimistic)"
    )
    print(
        f"dedupe stage: missed {len(missed)}/{n_r} re-simulations ({len(missed) / max(1, n_r):.1%});"
        f" kept {defects_unique}/{len(defective)} defective re-sims unique"
    )
    print(f"embedding similarity ({args.model or 'untrained resnet18, mask+print, 64 px'}):")
    print(
        f"  re-sim to its library entry: min {min(true_sim):.4f}  p1 {pct(true_sim, 1):.4f}"
        f"  p5 {pct(true_sim, 5):.4f}  median {pct(true_sim, 50):.4f};  top-1 is the true entry"
        f" {top1_is_true}/{n_r}; in the top {settings.candidate_pool}:"
        f" {sum(r < settings.candidate_pool for r in true_rank)}/{n_r};"
        f" median rank {pct(true_rank, 50):.0f}"
    )
    sf = [s for s, _ in same_family_top]
    print(
        f"  distinct to nearest entry:   median {pct(distinct_top, 50):.4f}"
        f"  p95 {pct(distinct_top, 95):.4f}"
        f"  p99 {pct(distinct_top, 99):.4f}  max {max(distinct_top):.4f}"
    )
    print(f"  distinct to nearest same-family entry: p95 {pct(sf, 95):.4f}  max {max(sf):.4f}")
    for level in (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, gate):
        recall = sum(s >= level for s in true_sim) / n_r
        passed = sum(s >= level for s in distinct_top) / n_d
        print(
            f"  gate {level:.4f}: re-sims through {recall:.3f}; distinct through (to be checked on pixels)"
            f" {passed:.3f}"
        )
    print()
    missed_ranks = [true_rank[i] for i in missed]
    print("  missed re-sims whose true entry is above the gate and among the N nearest (retrieval bound):")
    print("   " + "  ".join(
        f"N={n}: {sum(true_rank[i] < n and sims[i, i] >= gate for i in missed) / max(1, len(missed)):.3f}"
        for n in (1, 3, 5, 10, 20, 50, 100, 200)
    ) + f";  median rank {pct(missed_ranks, 50):.0f}, max {max(missed_ranks, default=0)}")
    print()
    print(f"gate {gate:.4f} ({gate_note})")
    print(
        f"hybrid confirmation (gate {settings.near_identity_similarity:.4f};"
        f" pool of {settings.candidate_pool}"
        f" nearest, ranked by coarse NCC, best {settings.max_candidates} checked):"
    )
    print(
        f"{'queries':<24}{'n':>5}{'confirmed':>11}{'rate':>8}{'via hash':>10}{'via desc':>10}"
        f"{'ms/result':>11}"
    )
    for name, results in rows.items():
        n = len(results)
        ok = sum(li is not None for li, _, _ in results)
        via_hash = sum(p in ("hash", "exact") for _, p, _ in results)
        via_desc = sum(p == "descriptors" for _, p, _ in results)
        ms = float(np.mean([m for _, _, m in results])) if results else float("nan")
        print(f"{name:<24}{n:>5}{ok:>11}{ok / max(1, n):>8.3f}{via_hash:>10}{via_desc:>10}{ms:>11.2f}")
    print(
        f"  baseline (print_edge_band_px 0: no topology check, old print limits), same run: missed re-sims"
        f" confirmed to their own entry {baseline_right}/{len(missed)}"
        f" ({baseline_right / max(1, len(missed)):.3f}); print-only hotspots confirmed"
        f" {sum(li is not None for li, _, _ in baseline_rows['print-only hotspots'])}/{len(print_only)}"
    )
    by_kind: dict[str, list[int]] = {}
    for (li, _, _), sample in zip(rows["print-only hotspots"], print_only, strict=True):
        tally = by_kind.setdefault(str(sample.labels["defect"]), [0, 0])
        tally[0] += li is not None
        tally[1] += 1
    print("  print-only hotspots by defect (confirmed/n): "
          + ", ".join(f"{kind} {c}/{n}" for kind, (c, n) in sorted(by_kind.items())))
    print(
        f"  print_edge_band_px {settings.print_edge_band_px}, print_tolerance_px"
        f" {settings.print_tolerance_px}, print_mismatch_max_px {settings.print_mismatch_max_px}"
    )
    print(
        f"  missed re-sims confirmed to their own entry: {confirmed_right}/{len(missed)}"
        f" ({confirmed_right / max(1, len(missed)):.3f}); to a wrong entry: {confirmed_wrong}"
    )
    print("  missed re-sims not confirmed: " + ", ".join(f"{k} {v}" for k, v in misses.items()))
    kept_right = sum(li == i for (li, _, _), i in missed_rows if i in kept)
    print(
        f"  across_process {settings.across_process}; same run, across_process marginal: missed re-sims"
        f" confirmed to their own entry {marginal_right}/{len(missed)}"
        f" ({marginal_right / max(1, len(missed)):.3f}); strict topology (marginal,"
        f" marginal_width_fraction 0): {strict_right}/{len(missed)}"
        f" ({strict_right / max(1, len(missed)):.3f})"
    )
    print(
        f"  missed re-sims whose print keeps its topology at the true shift: {len(kept)}/{len(missed)};"
        f" of those confirmed {kept_right}/{len(kept)} ({kept_right / max(1, len(kept)):.3f})"
    )
    for kind in ("marginal", "components", "holes"):
        some = [i for i in missed if change[i] == kind]
        print(f"  ... whose print changed: {kind:<10} {len(some):>4}; confirmed"
              f" {sum(li == i for (li, _, _), i in missed_rows if i in some)}")
    by_focus: dict[float, list[int]] = {}
    for (li, _, _), i in missed_rows:
        tally = by_focus.setdefault(resim_focus[i], [0, 0])
        tally[0] += li == i
        tally[1] += 1
    print("  missed re-sims confirmed by |defocus| (nm): "
          + ", ".join(f"{f:g}: {c}/{n}" for f, (c, n) in sorted(by_focus.items())))
    t, o = best_ncc["true"], best_ncc["other"]
    print(
        f"  true entry first after the NCC ranking: {sum(r == 0 for r in ncc_rank)}/{len(ncc_rank)}"
        f" (max rank {max(ncc_rank, default=-1)});"
        f" top NCC when it is the true entry: min {min(t, default=float('nan')):.3f}"
        f" p5 {pct(t, 5):.3f}; otherwise (distinct, defective, wrong): max {max(o, default=float('nan')):.3f}"
        f" p95 {pct(o, 95):.3f}"
    )
    print(
        f"  pool ranking (coarse NCC of the pool above the gate) costs {np.mean(ranking_ms):.2f} ms/result"
        f" (p95 {pct(ranking_ms, 95):.2f}) of the figures above"
    )
    print()
    print(
        "each path alone, ungated (true: all re-sims vs their entry;"
        " false: each distinct layout vs its nearest"
        " same-family entry):"
    )
    print(
        f"{'path':<14}{'true recall':>12}{'false conf.':>13}{'defect conf.':>14}{'print-only':>12}"
        f"{'ms/pair mean':>14}{'p95':>8}"
    )
    for name, s in path_stats.items():
        print(
            f"{name:<14}{np.mean(s['true_ok']):>12.3f}{int(sum(s['false_ok'])):>9}/{n_d:<3}"
            f"{int(sum(s['defect_ok'])):>10}/{len(defective):<3}"
            f"{int(sum(s['print_only_ok'])):>8}/{len(print_only):<3}{np.mean(s['ms']):>14.2f}"
            f"{pct(s['ms'], 95):>8.2f}"
        )
    print(
        "confirmed re-sims with one topology edit to the print, mask unchanged, ungated against their own"
        " entry (confirmed/made; [strict topology, no marginal feature forgiven]; (old check)): "
        + ", ".join(f"{e} {c[1]}/{c[0]} [{c[3]}] ({c[2]})" for e, c in edit_counts.items())
    )
    print(f"baseline: the encoder itself costs {embed_ms:.2f} ms/result (batched, CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
