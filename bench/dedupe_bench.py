"""Dedupe benchmark: duplicate recall, false merges and throughput, against plain pHash.

Data (from ``toolkit.litho.FarmGenerator``, cached under ``--cache-dir``):
``--layouts`` distinct layouts, each simulated once at the nominal window and
once more as a re-simulated duplicate (window shifted by an integer in
``[-max_shift, max_shift]`` px on each axis, dose ``1 ± U(0, 0.03)``, PNG
re-encoded: 16-bit or another compression level). ``--defects`` further
layouts are simulated nominally and again shifted *with* a mask defect: those
must stay unique (dedupe must never hide a defect). The stream is shuffled.

Figures (one run, nothing asserted):

- accuracy of the dedupe core (``InMemoryDedupeStore``) and of plain
  ``imagehash.phash`` of the print and of the mask at Hamming <= 10 (first
  earlier result within the radius wins): duplicate recall, false merges
  (a result merged into another layout), defective variants merged;
- distributions of the spectral hash distance (duplicates, distinct layouts of
  the same family, of other families) that the radius was chosen from;
- throughput of the core with a real Redis (its own ``redis-server`` on a free
  port, stopped at the end), results/s per process, with a hashing-only
  figure beside it.

With ``--data real`` the same for the SKY130 set (``bench/dedupe_real.py``), and with
``--audit-pairs`` every pair of that set verified once, whatever the order
(``bench/dedupe_audit.py``).

Example::

    python bench/dedupe_bench.py --layouts 2000 --defects 150
"""

from __future__ import annotations

import argparse
import base64
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for bench.* too

from app.launcher import free_port, wait_for_port
from bench.dedupe_audit import audit_pairs
from bench.dedupe_baselines import Clip, baselines, timed
from bench.dedupe_real import (
    RealClip,
    cached_png_pairs,
    load_or_generate_real,
    shows_moved_window,
)
from services.dedupe.core import DedupeCore, DedupeSettings
from services.dedupe.store import DedupeStore
from services.dedupe.store_memory import InMemoryDedupeStore
from services.dedupe.store_redis import RedisDedupeStore
from shared.contracts import DuplicateRecord, ImageRef, SimResult, UniqueResult
from shared.errors import InputError
from shared.hashing import hamming_distance, spectral_hash
from shared.imaging import decode_image, sha256_hex, to_uint8
from shared.verification.windows import overlap_scores
from toolkit.litho import FarmGenerator, Variant, applicable_defects
from toolkit.litho.cell_rows import SKY130_HD_DIR
from toolkit.litho.defects import NoDefectSite

CACHE_VERSION = 1
# the opt-in evidence floor on every match (DedupeSettings.min_matched_px) that the bench runs beside the
# default: five contacts at 4 nm/px, the smallest floor measured with no false merge over the real set's
# eight orders (1,024 left six)
EVIDENCE_FLOOR_PX = 1280
#: the previous default: profile and bridge candidates verified nearest by profile first, no rule on thin
#: profile matches
PREVIOUS = DedupeSettings(rank_by_overlap=False, profile_thin_match_px=0)
Verdicts = dict[str, str | None]  # result_id -> the result it duplicates (None: unique)


# -- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchItem:
    """One simulated result: encoded images and the truth the figures are computed from."""

    result_id: str
    group: str
    family: str
    role: str  # "original" | "duplicate" | "defect"
    mask_png: bytes
    print_png: bytes
    mask_bits: int
    print_bits: int


def _png(image: np.ndarray, bits: int, compression: int) -> bytes:
    if bits == 16:
        pixels = np.clip(np.rint(image * 65535.0), 0, 65535).astype(np.uint16)
    else:
        pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    ok, buffer = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return bytes(buffer.tobytes())


def generate_items(n_layouts: int, n_defects: int, max_shift_px: int, seed: int) -> Iterator[BenchItem]:
    """Originals, their re-simulated duplicates, and defective re-simulations (in that order)."""
    farm = FarmGenerator(seed=seed)
    rng = np.random.default_rng(seed + 1)
    for index in range(n_layouts + n_defects):
        layout = farm.new_layout()
        group = f"{farm.group_id(layout)}-{index}"
        original = farm.render(layout, group, Variant())
        yield BenchItem(f"{group}-o", group, layout.family, "original",
                        _png(original.mask, 8, 3), _png(original.simulated, 8, 3), 8, 8)
        shift = tuple(int(v) for v in rng.integers(-max_shift_px, max_shift_px + 1, size=2))
        dose = round(1.0 + float(rng.uniform(-0.03, 0.03)), 4)
        variant = Variant(shift_px=(shift[0], shift[1]), dose=dose)
        bits, compression = (16, 3) if rng.random() < 0.5 else (8, 9)
        if index < n_layouts:
            dup = farm.render(layout, group, variant)
            role = "duplicate"
        else:
            options = applicable_defects(layout, farm.window_nm(variant.shift_px), farm.rng)
            if not options:
                continue
            try:
                dup = farm.render(layout, group, variant, defect=str(rng.choice(options)))
            except NoDefectSite:
                continue
            role = "defect"
        yield BenchItem(f"{group}-{role[0]}", group, layout.family, role,
                        _png(dup.mask, bits, compression), _png(dup.simulated, bits, compression), bits, bits)


def load_or_generate(cache_dir: Path, n_layouts: int, n_defects: int, max_shift_px: int,
                     seed: int) -> list[BenchItem]:
    """The item set, read from a cache file when one exists (raw PNG bytes, no pickle)."""
    from tqdm import tqdm

    name = f"dedupe_bench_v{CACHE_VERSION}_{n_layouts}_{n_defects}_{max_shift_px}_{seed}"
    return cached_png_pairs(cache_dir, name, BenchItem, lambda: tqdm(
        generate_items(n_layouts, n_defects, max_shift_px, seed), total=2 * (n_layouts + n_defects),
        desc="simulating", unit="result"))


def _ref(png: bytes, bits: int) -> ImageRef:
    shape = decode_image(png).shape
    return ImageRef(format="png", sha256=sha256_hex(png), shape=(shape[0], shape[1]),
                    dtype="uint16" if bits == 16 else "uint8",
                    inline_b64=base64.b64encode(png).decode("ascii"))


def to_results(items: list[BenchItem]) -> list[SimResult]:
    now = datetime.now(UTC)
    return [SimResult(result_id=it.result_id, job_id="bench", clip_id=it.group, nm_per_px=4.0,
                      mask=_ref(it.mask_png, it.mask_bits), simulated=_ref(it.print_png, it.print_bits),
                      labels={"family": it.family, "group": it.group, "role": it.role}, produced_at=now)
            for it in items]


# -- accuracy ----------------------------------------------------------------------------------


@dataclass
class Accuracy:
    name: str
    recall: float
    duplicates: int
    false_merges: int
    defects_merged: int
    defects: int
    flagged: int


def score(name: str, stream: list[BenchItem], duplicate_of: Verdicts) -> Accuracy:
    """Recall over (original, duplicate) pairs: the later of the two must point at the earlier."""
    by_id = {it.result_id: it for it in stream}
    position = {it.result_id: i for i, it in enumerate(stream)}
    members: dict[str, list[BenchItem]] = {}
    for it in stream:
        members.setdefault(it.group, []).append(it)
    hits = pairs = defects_merged = defects = 0
    for group_items in members.values():
        if len(group_items) != 2:
            continue
        first, later = sorted(group_items, key=lambda it: position[it.result_id])
        if any(it.role == "defect" for it in group_items):
            defects += 1
            defects_merged += duplicate_of.get(later.result_id) is not None
        else:
            pairs += 1
            hits += duplicate_of.get(later.result_id) == first.result_id
    false_merges = sum(1 for rid, of in duplicate_of.items()
                       if of is not None and by_id[of].group != by_id[rid].group)
    flagged = sum(1 for of in duplicate_of.values() if of is not None)
    return Accuracy(name, hits / max(pairs, 1), pairs, false_merges, defects_merged, defects, flagged)


def run_core(core: DedupeCore, results: list[SimResult], batch_size: int,
             at_arrival: Verdicts | None = None) -> tuple[Verdicts, float]:
    """Each result's final verdict (a late duplicate record, see ``DedupeSettings.bridge_candidates``,
    replaces the unique verdict given on arrival) and the seconds taken; ``at_arrival`` gets the
    verdicts as first given."""
    duplicate_of: Verdicts = {}
    start = time.perf_counter()
    for i in range(0, len(results), batch_size):
        decisions = core.decide_batch(results[i:i + batch_size])
        for result, decision in zip(results[i:i + batch_size], decisions, strict=True):
            outcome = decision.outcome
            if isinstance(outcome, InputError):
                raise RuntimeError(f"{result.result_id}: {outcome}")
            assert isinstance(outcome, DuplicateRecord | UniqueResult)
            duplicate_of[result.result_id] = (outcome.duplicate_of if isinstance(outcome, DuplicateRecord)
                                              else None)
            if at_arrival is not None:
                at_arrival[result.result_id] = duplicate_of[result.result_id]
            for late in decision.late:
                duplicate_of[late.record.result_id] = late.record.duplicate_of
    return duplicate_of, time.perf_counter() - start


def phash_bits(png: bytes) -> int:
    import imagehash
    from PIL import Image

    image = Image.fromarray(np.clip(np.rint(decode_image(png) * 255.0), 0, 255).astype(np.uint8))
    return int(str(imagehash.phash(image)), 16)


def run_phash_baseline(stream: list[BenchItem], which: str, radius: int) -> tuple[Verdicts, float]:
    """Plain pHash: a result is a duplicate of the nearest earlier unique within ``radius`` bits."""
    start = time.perf_counter()
    kept_ids: list[str] = []
    kept = np.zeros(0, dtype=np.uint64)
    duplicate_of: Verdicts = {}
    for it in stream:
        value = np.uint64(phash_bits(it.print_png if which == "print" else it.mask_png))
        distances = np.array([int(v).bit_count() for v in np.bitwise_xor(kept, value)], dtype=np.int64)
        if distances.size and distances.min() <= radius:
            duplicate_of[it.result_id] = kept_ids[int(distances.argmin())]
        else:
            duplicate_of[it.result_id] = None
            kept_ids.append(it.result_id)
            kept = np.append(kept, value)
    return duplicate_of, time.perf_counter() - start


# -- distributions -----------------------------------------------------------------------------


def distance_distributions(items: list[BenchItem], radius: int) -> list[str]:
    originals = {it.group: it for it in items if it.role == "original"}
    pairs = [(originals[it.group], it) for it in items if it.role == "duplicate"]
    hashes = {it.result_id: spectral_hash(decode_image(it.mask_png)).value for it in items}
    dup = np.array([hamming_distance(hashes[a.result_id], hashes[b.result_id]) for a, b in pairs])
    firsts = [a for a, _ in pairs]
    families = np.array([a.family for a in firsts])
    packed = np.array([np.frombuffer(hashes[a.result_id].to_bytes(32, "big"), dtype=np.uint8)
                       for a in firsts])
    unpacked = np.unpackbits(packed, axis=1).astype(np.int16)
    same_family: list[np.ndarray] = []
    other_family: list[np.ndarray] = []
    for i in range(len(firsts) - 1):
        d = np.abs(unpacked[i + 1:] - unpacked[i]).sum(axis=1)
        same = families[i + 1:] == families[i]
        same_family.append(d[same])
        other_family.append(d[~same])
    sf, of = np.concatenate(same_family), np.concatenate(other_family)

    def q(values: np.ndarray) -> str:
        p = np.percentile(values, [0, 0.1, 1, 50, 99, 99.9, 100])
        return " ".join(f"{v:5.0f}" for v in p)

    return [
        "spectral-v1 (256 bits) Hamming distances       min  p0.1    p1   p50   p99 p99.9   max",
        f"  re-simulated duplicates (n={len(dup)}):     {q(dup)}",
        f"  distinct, same family (n={len(sf)}):   {q(sf)}",
        f"  distinct, other family (n={len(of)}):  {q(of)}",
        f"  within radius {radius}: duplicates {np.mean(dup <= radius):.4f}; distinct pairs "
        f"same family {int((sf <= radius).sum())}, other {int((of <= radius).sum())}",
    ]


# -- real layouts ------------------------------------------------------------------------------


@dataclass
class RealAccuracy:
    name: str
    recall: float
    resimulations: int
    false_merges: int  # merged into another window set (a far window into its own set excluded)
    far_merged: int  # 17-31 px windows merged into a clip of their own set
    far: int
    seconds: float
    same_pattern: int = 0  # merged into another set whose window shows the same drawn pattern
    far_beyond: int = 0  # of far_merged: into a clip whose window lies more than 16 px away
    set_recall: float = 0.0  # recall counting only a merge into a member of the set itself
    same_layout_hits: int = 0  # members merged into another clip of the same layout (counted as hits)
    near: int = 0  # results to merge in the sets whose later members each have an earlier one <= 16 px away
    near_recall: float = 0.0  # recall over those: what the strict rule can reach


def score_real(name: str, stream: list[RealClip], duplicate_of: Verdicts, seconds: float,
               same_pattern: Callable[[RealClip, RealClip], bool]) -> RealAccuracy:
    """Recall over each window set (original and three re-simulations): of its four results, all but
    one (the one kept) must end merged into a clip of the same layout: a member of its set, or
    another clip whose window shows this very layout (its set's own 17-31 px window, or a clip that
    ``same_pattern`` finds is this result's layout under a moved window: a cell repeating the
    pattern). Without late duplicates the one kept is the first to arrive; a late duplicate can
    make the first a duplicate of a later one, which is then the one kept. ``set_recall`` counts
    only merges into the set itself; ``near_recall`` only the sets each of whose later members has
    an earlier member at most 16 px away (in the others a copy arrives when only copies moved the
    other way, 17-32 px from it, came before it). A merge into another set is a false merge unless
    ``same_pattern`` holds."""
    by_id = {c.result_id: c for c in stream}
    position = {c.result_id: i for i, c in enumerate(stream)}
    sets: dict[str, list[RealClip]] = {}
    for c in stream:
        if c.role != "far":
            sets.setdefault(c.group, []).append(c)
    hits = set_hits = total = near = near_hits = 0
    for members in sets.values():
        ordered = sorted(members, key=lambda c: position[c.result_id])
        found = in_set = 0
        for clip in ordered:
            of = duplicate_of.get(clip.result_id)
            if of is None:
                continue
            into = by_id[of]
            own = into.group == clip.group
            in_set += own
            found += own or into.group == f"{clip.group}-far" or same_pattern(into, clip)
        wanted = len(ordered) - 1  # one result of the set is kept (the first to arrive, or the root)
        total += wanted
        hits += min(found, wanted)
        set_hits += min(in_set, wanted)
        if all(any(max(abs(e.window_x_nm - later.window_x_nm), abs(e.window_y_nm - later.window_y_nm))
                   <= 16.5 * 4.0 for e in ordered[:k]) for k, later in enumerate(ordered[1:], 1)):
            near += wanted
            near_hits += min(found, wanted)
    false_merges = far_merged = far_beyond = same = 0
    for rid, of in duplicate_of.items():
        if of is None:
            continue
        a, b = by_id[of], by_id[rid]
        if a.group == b.group:
            continue
        if a.group.removesuffix("-far") == b.group.removesuffix("-far"):
            if b.role != "far":  # a member of the set merged into its own far window: the same layout
                continue
            far_merged += 1
            move_px = max(abs(a.window_x_nm - b.window_x_nm), abs(a.window_y_nm - b.window_y_nm)) / 4.0
            far_beyond += move_px > 16.5
        elif same_pattern(a, b):
            same += 1
        else:
            false_merges += 1
    far = sum(c.role == "far" for c in stream)
    return RealAccuracy(name, hits / max(total, 1), total, false_merges, far_merged, far, seconds, same,
                        far_beyond, set_hits / max(total, 1), hits - set_hits, near, near_hits / max(near, 1))


def pattern_judge(seed: int, cells: Path) -> Callable[[RealClip, RealClip], bool]:
    """Truth for a merge across window sets: at the best mask shift (searched on pixels), one of the two
    clips must be, pixel for pixel, the other's layout re-rendered under the moved window. Either way
    round, both clips are then windows of one drawn layout (the one around that other clip): the
    clip merged into may show what lies beyond the merged result's window, or the merged result what
    lies beyond the other's."""
    memo: dict[tuple[str, str], bool] = {}

    def judge(a: RealClip, b: RealClip) -> bool:
        key = (a.result_id, b.result_id)
        if key not in memo:
            mask_a = to_uint8(decode_image(a.mask_png))
            mask_b = to_uint8(decode_image(b.mask_png))
            scores = overlap_scores(mask_a, mask_b, 32)
            best = int(np.argmin(scores["ssd"] - 1e-3 * scores["matched"]))
            dy, dx = np.unravel_index(best, scores["ssd"].shape)
            shift = (int(dx) - 32, int(dy) - 32)
            memo[key] = (shows_moved_window(a, b, shift, seed, cells)
                         or shows_moved_window(b, a, (-shift[0], -shift[1]), seed, cells))
        return memo[key]

    return judge


def real_to_bench(stream: list[RealClip]) -> list[BenchItem]:
    return [BenchItem(c.result_id, c.group, c.family, c.role, c.mask_png, c.print_png, 8, 8) for c in stream]


def run_real(args: argparse.Namespace) -> None:
    clips = load_or_generate_real(args.cache_dir, args.real_windows, args.far_share, args.seed, args.cells)
    stream = list(clips)
    random.Random(args.seed).shuffle(stream)
    results = to_results(real_to_bench(stream))
    roles = [c.role for c in stream]
    sparse = sum(c.print_fill < 0.1 for c in stream)
    print(f"\nREAL LAYOUTS (SKY130 {', '.join(sorted({c.family for c in stream}))}): {len(stream)} results, "
          f"{roles.count('original')} windows each with 3 re-simulations moved 1-16 px (same process), "
          f"{roles.count('far')} windows moved 17-31 px; "
          f"{sparse} print under 10 % of the clip; shuffled (a copy may arrive before its original)")
    rows: list[RealAccuracy] = []
    judge = pattern_judge(args.seed, args.cells)
    for variant, settings in core_variants().items():
        name = f"dedupe core, {variant}"
        arrival: Verdicts = {}
        dup_of, seconds = run_core(DedupeCore(InMemoryDedupeStore(), settings), results, args.batch_size,
                                   arrival)
        rows.append(score_real(name, stream, dup_of, seconds, judge))
        if settings.bridge_candidates and dup_of != arrival:
            rows.append(score_real("  the same, verdicts on arrival", stream, arrival, seconds, judge))
    as_items = real_to_bench(stream)
    for which in ("print", "mask"):
        dup_of, seconds = run_phash_baseline(as_items, which, args.phash_radius)
        rows.append(score_real(f"imagehash.phash of the {which}, <= {args.phash_radius}", stream, dup_of,
                               seconds, judge))
    if not args.no_baselines:
        decoded = [Clip(c.result_id, to_uint8(decode_image(c.mask_png))) for c in stream]
        for name, run in baselines():
            dup_of, seconds = timed(run, decoded)
            rows.append(score_real(name, stream, dup_of, seconds, judge))
    print(f"{'method':44s} {'recall':>8s} {'in set':>7s} {'<= 16 px':>8s} {'false merges':>12s} "
          f"{'same pattern':>12s} {'far merged (> 16 px)':>21s} {'ms/result':>10s}")
    for r in rows:
        print(f"{r.name:44s} {r.recall:8.4f} {r.set_recall:7.4f} {r.near_recall:8.4f} {r.false_merges:12d} "
              f"{r.same_pattern:12d} "
              f"{r.far_merged:>8d} / {r.far:<3d} ({r.far_beyond:3d}) {1000 * r.seconds / len(stream):10.1f}")
    print(f"(recall over {rows[0].resimulations} results to merge: in each window set of 4 every result "
          "but one must end merged into a clip of its layout: a member of the set or another clip showing "
          "this layout under a moved window (the set's own 17-31 px window, or a cell repeating the pattern, "
          "checked by re-rendering the layout around either clip); final verdicts, a late duplicate record "
          "replacing the unique verdict given on arrival (bridges: DedupeSettings.bridge_candidates); "
          "'on arrival': the first verdicts only; "
          f"in set: only merges into the set itself count; <= 16 px: recall over the {rows[0].near} results "
          "to merge in the sets each of whose later members has an earlier one at most 16 px away; "
          "false merges: into another set whose layout differs; same pattern: into another set, one of the "
          "two clips being exactly the other's layout under a moved window; far merged: a window moved "
          "17-31 px from its set's original merged into a clip of that set, in brackets those merged into a "
          "clip more than 16 px away; "
          "in-memory store, one process)")
    if args.real_orders > 1:
        real_orders(clips, args, judge)
    if args.audit_pairs:
        audit_pairs(clips, to_results(real_to_bench(clips)), judge, DedupeSettings())


def core_variants() -> dict[str, DedupeSettings]:
    """The dedupe core's settings run on the real set: the default beside the previous default, every
    ranked candidate verified (no coarse gate), no bridges, the lenient mode, and the opt-in evidence floor
    on every match."""
    return {"strict (default)": DedupeSettings(),
            "strict, previous default": PREVIOUS,
            "strict, no coarse gate": DedupeSettings(coarse_gate=False),
            "strict, no bridges": DedupeSettings(bridge_candidates=0),
            "windows_are_duplicates": DedupeSettings(windows_are_duplicates=True),
            f"strict, evidence floor {EVIDENCE_FLOOR_PX} px":
                DedupeSettings(min_matched_px=EVIDENCE_FLOOR_PX)}


def real_orders(clips: list[RealClip], args: argparse.Namespace,
                judge: Callable[[RealClip, RealClip], bool]) -> None:
    """The dedupe core's rows over ``--real-orders`` arrival orders of the same set (shuffle seeds
    seed .. seed + n - 1): which layouts a sparse window is merged with depends on what came first."""
    settings = core_variants()
    if args.retrieval_bound:  # every stored result within reach verified: what better retrieval could give
        settings["strict, every candidate"] = DedupeSettings(hamming_radius=256, profile_candidates=64,
                                                             bridge_candidates=64)
    found: dict[str, list[RealAccuracy]] = {name: [] for name in settings}
    for order in range(args.real_orders):
        stream = list(clips)
        random.Random(args.seed + order).shuffle(stream)
        results = to_results(real_to_bench(stream))
        for name, chosen in settings.items():
            dup_of, seconds = run_core(DedupeCore(InMemoryDedupeStore(), chosen), results, args.batch_size)
            found[name].append(score_real(name, stream, dup_of, seconds, judge))
    print(f"\nthe dedupe core over {args.real_orders} arrival orders of the same SKY130 set (shuffle seeds "
          f"{args.seed}..{args.seed + args.real_orders - 1}): recall per order, false merges per order")
    for name, rows in found.items():
        recalls = " ".join(f"{r.recall:.4f}" for r in rows)
        merges = " ".join(str(r.false_merges) for r in rows)
        print(f"  {name:30s} recall mean {np.mean([r.recall for r in rows]):.4f} min "
              f"{min(r.recall for r in rows):.4f} ({recalls}); "
              f"false merges {sum(r.false_merges for r in rows)} ({merges}); "
              f"{1000 * np.mean([r.seconds for r in rows]) / len(clips):.1f} ms/result")


# -- redis -------------------------------------------------------------------------------------


class RedisServer:
    """A throwaway ``redis-server`` on a free port (no persistence)."""

    def __init__(self, binary: str = "/usr/bin/redis-server") -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port, 10.0, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", type=int, default=2000)
    parser.add_argument("--defects", type=int, default=150)
    parser.add_argument("--max-shift", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--phash-radius", type=int, default=10)
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "lithowatch_dedupe_cache")
    parser.add_argument("--redis-server", default="/usr/bin/redis-server")
    parser.add_argument("--data", choices=("generated", "real", "both"), default="both")
    parser.add_argument("--real-windows", type=int, default=50, help="real: window sets per layer")
    parser.add_argument("--real-orders", type=int, default=1,
                        help="real: also run the dedupe core over this many arrival orders")
    parser.add_argument("--far-share", type=float, default=0.3,
                        help="real: share of windows with a 17-31 px moved one")
    parser.add_argument("--cells", type=Path, default=SKY130_HD_DIR)
    parser.add_argument("--no-baselines", action="store_true", help="only the dedupe core and pHash")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis throughput figures")
    parser.add_argument("--audit-pairs", action="store_true",
                        help="real: also verify every pair of clips of one layer from different window sets, "
                             "whatever the order (the default settings; about 2 minutes)")
    parser.add_argument("--retrieval-bound", action="store_true",
                        help="real orders: also the core verifying every candidate within reach (hash radius "
                             "256, 64 by profile, 64 bridges; about 3x the CPU)")
    args = parser.parse_args()
    if args.data in ("generated", "both"):
        run_generated(args)
    if args.data in ("real", "both"):
        run_real(args)
    return 0


def run_generated(args: argparse.Namespace) -> None:

    items = load_or_generate(args.cache_dir, args.layouts, args.defects, args.max_shift, args.seed)
    stream = list(items)
    random.Random(args.seed).shuffle(stream)
    results = to_results(stream)
    settings = DedupeSettings()
    roles = [it.role for it in stream]
    print(f"{len(stream)} results: {roles.count('original')} distinct layouts, {roles.count('duplicate')} "
          f"re-simulated duplicates (shift <= {args.max_shift} px per axis, dose +-3 %, re-encoded), "
          f"{roles.count('defect')} re-simulations with a mask defect")

    dup_of, core_seconds = run_core(DedupeCore(InMemoryDedupeStore(), settings), results, args.batch_size)
    rows = [score("dedupe core (spectral + pixel check)", stream, dup_of)]
    times = {rows[0].name: core_seconds}
    for name, chosen in (("dedupe core, previous default", PREVIOUS),
                         ("dedupe core, no coarse gate", DedupeSettings(coarse_gate=False)),
                         ("dedupe core, coarse masks made per batch", DedupeSettings(coarse_cache_mib=0)),
                         ("dedupe core, no bridges", DedupeSettings(bridge_candidates=0)),
                         (f"dedupe core, evidence floor {EVIDENCE_FLOOR_PX} px",
                          DedupeSettings(min_matched_px=EVIDENCE_FLOOR_PX))):
        dup_of, seconds = run_core(DedupeCore(InMemoryDedupeStore(), chosen), results, args.batch_size)
        rows.append(score(name, stream, dup_of))
        times[name] = seconds
    for which in ("print", "mask"):
        name = f"imagehash.phash of the {which}, <= {args.phash_radius}"
        dup_of, seconds = run_phash_baseline(stream, which, args.phash_radius)
        rows.append(score(name, stream, dup_of))
        times[name] = seconds
    if not args.no_baselines:
        decoded = [Clip(it.result_id, to_uint8(decode_image(it.mask_png))) for it in stream]
        for name, run in baselines():
            dup_of, seconds = timed(run, decoded)
            rows.append(score(name, stream, dup_of))
            times[name] = seconds
    print()
    print(f"{'method':44s} {'dup recall':>10s} {'false merges':>12s} {'defects merged':>15s} "
          f"{'ms/result':>10s}")
    for row in rows:
        print(f"{row.name:44s} {row.recall:10.4f} {row.false_merges:12d} "
              f"{row.defects_merged:>8d} / {row.defects:<4d} {1000 * times[row.name] / len(stream):10.1f}")
    print("(ms/result above: in-memory store, single process)")
    print()
    for line in distance_distributions(items, settings.hamming_radius):
        print(line)

    if args.no_redis:
        return
    print()
    hash_start = time.perf_counter()
    core_for_hashing = DedupeCore(InMemoryDedupeStore(), settings)
    for result in results:
        core_for_hashing.prepare(result)
    hash_rate = len(results) / (time.perf_counter() - hash_start)
    server = RedisServer(args.redis_server)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=server.port)
        # The previous default's cost with Redis, beside the default's, on a store of its own.
        previous: DedupeStore = RedisDedupeStore(client, prefix="dedupe-previous", ttl_seconds=3600)
        _, previous_seconds = run_core(DedupeCore(previous, PREVIOUS), results, args.batch_size)
        client.flushdb()
        store: DedupeStore = RedisDedupeStore(client, prefix="dedupe", ttl_seconds=3600)
        dup_of, redis_seconds = run_core(DedupeCore(store, settings), results, args.batch_size)
        redis_row = score("dedupe core, real Redis", stream, dup_of)
        # A second pass is all redeliveries: every verdict must come back unchanged.
        replay_of, replay_seconds = run_core(DedupeCore(store, settings), results, args.batch_size)
        replay_same = sum(replay_of[k] == dup_of[k] for k in dup_of)
        used = client.info("memory").get("used_memory", 0)
        keys = client.dbsize()
    finally:
        server.stop()
    print(f"throughput, one process, batch {args.batch_size} "
          "(other work was running on this 2-core machine):")
    print(f"  decode + hash only (no store):             {hash_rate:8.1f} results/s")
    print(f"  core with real Redis:                      {len(results) / redis_seconds:8.1f} results/s "
          f"(recall {redis_row.recall:.4f}, false merges {redis_row.false_merges})")
    print(f"  the same, previous default:                {len(results) / previous_seconds:8.1f} results/s")
    print(f"  redelivery of the whole stream:            {len(results) / replay_seconds:8.1f} results/s "
          f"({replay_same}/{len(dup_of)} verdicts unchanged)")
    print(f"  Redis: {keys} keys, {used / 2**20:.1f} MiB used ({used / max(keys, 1):.0f} B/key)")


if __name__ == "__main__":
    raise SystemExit(main())
