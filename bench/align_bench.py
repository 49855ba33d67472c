"""Registration accuracy and throughput of the alignment core, against baselines, in one run.

Pairs (mask, print) come from the litho simulator with a known print->mask transform.
The layout is simulated on a window larger than the clip and the delivered print is
that larger print resampled through the known transform, so its borders hold real
pattern -- what a farm delivers when the print's window is offset from the mask's (and,
for ``rst``, slightly rotated or scaled). Dose (+-5 %) and defocus (+-40 nm) vary.

Two data sets (``--data``):

- ``generated``: the emulator's layout families, ``--pairs-per-family`` windows each;
- ``real``: the SKY130 standard cells (``toolkit/litho/cells``, Apache-2.0) abutted in
  rows as a placer does (shared rails, mirrored rows), shrunk by 0.37 onto the 193i
  limit, windows of ``--size-px`` centred on a row, four mask layers as families (li1
  routing, licon and mcon contacts, poly gates), ``--real-windows-per-family`` windows
  each, dose to size per layer, shifts up to ``--real-shift-px``.

Pairs are cached (``--cache``) per data set and parameters, so a rerun only registers.

- ``shift``: translation only, uniform in [-max_shift, max_shift] px (subpixel);
- ``rst``:   rotation in [-2, 2] deg and scale in [0.98, 1.02] about the clip centre, plus the shift.

Error = displacement of the four image corners between the true and the estimated
transform; columns give the *max* over the corners (``<=1px``) and the *mean*
(``mean<=1``). A pair is *identifiable* unless the mask repeats itself within reach of
the search (the blurred mask's central crop correlates >= 0.97 with the mask at an
offset 16 to 66 px away: gratings whose lines cross the clip, regular contact arrays);
no method can pin those down.
``ok%`` is the share the quality gate accepts, ``ok<=1`` the accuracy among those
(``ok med`` their median error). The ``self-consistent`` rows measure against the
method's own answer for the unwarped window composed with the warp (windows whose
unwarped pair it refuses are left out): what a method's systematic offset from the
drawn mask does not count in, as when prints of unknown true placement are warped
by a known amount.
Throughput is pairs per CPU-second on one thread (OpenCV and BLAS limited to 1).
The first method chosen is scored against the bars and given the negative controls.

    python bench/align_bench.py --pairs-per-family 40                 # generated and real
    python bench/align_bench.py --data real --methods default,orb,sift # a subset of methods
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.registration import (
    Aligner,
    AlignSettings,
    Registration,
    corner_errors_px,
    orb_ransac_baseline,
    rotation_scale_shift,
    sift_ransac_baseline,
)
from toolkit import litho

ROOT = Path(__file__).resolve().parents[1]
Method = Callable[[np.ndarray, np.ndarray], Registration]
SELF_SIMILARITY_LIMIT = 0.97
REAL_LAYERS = ("li1=67/20", "licon=66/44", "mcon=67/44", "poly=66/20")
REAL_SHRINK = 0.37
REAL_ROW_WIDTH_NM = 24000.0


@dataclass(frozen=True)
class Pair:
    family: str
    case: str
    mask: np.ndarray
    simulated: np.ndarray
    truth: np.ndarray  # print -> mask homography
    identifiable: bool


def identifiable(mask: np.ndarray, max_shift_px: int) -> bool:
    """False when the blurred mask matches itself at another offset that the search could
    confuse with the true one (up to twice the search range away, beyond 16 px)."""
    smooth = cv2.GaussianBlur(mask, (0, 0), 4.0)
    if float(smooth.std()) < 1e-3:
        return False
    m = 2 * (max_shift_px + 1)
    template = np.ascontiguousarray(smooth[m:-m, m:-m])
    if float(template.std()) < 1e-3:
        return False
    scores = cv2.matchTemplate(smooth, template, cv2.TM_CCOEFF_NORMED)
    yy, xx = np.mgrid[0 : scores.shape[0], 0 : scores.shape[1]]
    far = (yy - m) ** 2 + (xx - m) ** 2 > 16**2
    return float(scores[far].max()) < SELF_SIMILARITY_LIMIT


def make_pair(family: str, case: str, big_mask: np.ndarray, big_print: np.ndarray, size_px: int,
              pad_px: int, truth: np.ndarray, max_shift_px: int) -> Pair:
    """Crop the mask window; resample the big print so that print(p) = big(truth @ p + pad)."""
    mask = np.ascontiguousarray(big_mask[pad_px : pad_px + size_px, pad_px : pad_px + size_px])
    to_big = np.eye(3)
    to_big[:2, 2] = pad_px
    simulated = delivered(big_print, to_big @ truth, size_px, cv2.BORDER_REFLECT)
    return Pair(family, case, mask, simulated, truth, identifiable(mask, max_shift_px))


def delivered(printed: np.ndarray, print_to_image: np.ndarray, size_px: int, border: int) -> np.ndarray:
    """The delivered print: ``printed`` resampled so that pixel p shows ``printed(print_to_image @ p)``
    (bicubic), what falls outside it filled by OpenCV's ``border`` mode, clipped to [0, 1]."""
    out = cv2.warpPerspective(printed, print_to_image, (size_px, size_px),
                              flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=border,
                              borderValue=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def window_pairs(family: str, big_mask: np.ndarray, big_print: np.ndarray, size_px: int, pad_px: int,
                 shift_px: float, max_shift_px: int, rng: np.random.Generator) -> Iterator[Pair]:
    """The window unwarped (case ``none``), then a ``shift`` and an ``rst`` pair of it."""
    yield make_pair(family, "none", big_mask, big_print, size_px, pad_px, np.eye(3), max_shift_px)
    t = (float(rng.uniform(-shift_px, shift_px)), float(rng.uniform(-shift_px, shift_px)))
    yield make_pair(family, "shift", big_mask, big_print, size_px, pad_px,
                    rotation_scale_shift(size_px, t, 0.0, 1.0), max_shift_px)
    t = (float(rng.uniform(-shift_px, shift_px)), float(rng.uniform(-shift_px, shift_px)))
    angle, scale = float(rng.uniform(-2.0, 2.0)), float(rng.uniform(0.98, 1.02))
    yield make_pair(family, "rst", big_mask, big_print, size_px, pad_px,
                    rotation_scale_shift(size_px, t, angle, scale), max_shift_px)


def warp_pad_px(size_px: int, shift_px: float) -> int:
    """Margin of the simulated window that the largest shift, rotation and scale reach into."""
    return math.ceil(shift_px + size_px * (math.radians(2.0) + 0.02)) + 16


def generate_pairs(args: argparse.Namespace) -> Iterator[Pair]:
    """One ``shift`` and one ``rst`` pair per simulated layout window of each family."""
    rng = np.random.default_rng(args.seed)
    size, shift = args.size_px, args.max_shift_px
    pad = warp_pad_px(size, shift)
    big = size + 2 * pad
    simulator = litho.LithoSimulator(size_px=big, nm_per_px=args.nm_per_px)
    extent_nm = big * args.nm_per_px + 512.0
    for family in litho.FAMILIES:
        for _ in range(args.pairs_per_family):
            layout = litho.generate_layout(family, rng, extent_nm=extent_nm)
            origin = (float(rng.uniform(0.0, 512.0)), float(rng.uniform(0.0, 512.0)))
            big_mask = litho.rasterize(layout, origin, big, args.nm_per_px)
            big_print = simulator.printed(big_mask, dose=float(rng.uniform(0.95, 1.05)),
                                          defocus_nm=float(rng.uniform(-40.0, 40.0)))
            yield from window_pairs(family, big_mask, big_print, size, pad, shift, args.max_shift_px, rng)


def real_pairs(args: argparse.Namespace) -> Iterator[Pair]:
    """One ``shift`` and one ``rst`` pair per window over SKY130 standard-cell rows, per layer."""
    from toolkit.litho.cell_rows import (
        SKY130_HD_DIR,
        LayerSpec,
        place_rows,
        placed_layout,
        read_cell,
        row_cells,
        row_windows,
    )
    from toolkit.litho.farm import context_pad_px, simulate_clip
    from toolkit.litho.layout_import import dose_to_size

    rng = np.random.default_rng(args.seed)
    size, shift = args.size_px, args.real_shift_px
    pad = warp_pad_px(size, shift)
    big = size + 2 * pad
    layers = [LayerSpec.parse(text) for text in REAL_LAYERS]
    files = sorted(SKY130_HD_DIR.glob("*.gds"))
    cells, _ = row_cells([read_cell(path, layers, REAL_SHRINK) for path in files])
    placements = place_rows(cells, REAL_ROW_WIDTH_NM, rng)
    simulator = litho.LithoSimulator(size_px=big, nm_per_px=args.nm_per_px)
    context_px = context_pad_px(big, args.nm_per_px)
    window_nm = size * args.nm_per_px
    pad_nm = pad * args.nm_per_px
    for spec in layers:
        layout = placed_layout(placements, spec.name, spec.name)
        windows = list(row_windows(placements, layout, window_nm))
        dose = dose_to_size(litho.LithoSimulator(size_px=size, nm_per_px=args.nm_per_px), layout, windows,
                            size, context_pad_px(size, args.nm_per_px))
        chosen = rng.choice(len(windows), size=min(args.real_windows_per_family, len(windows)), replace=False)
        for index in sorted(int(i) for i in chosen):
            w = windows[index]
            big_mask, big_print = simulate_clip(
                simulator, layout, (w.x_nm - pad_nm, w.y_nm - pad_nm), big, context_px,
                dose=dose * float(rng.uniform(0.97, 1.03)), defocus_nm=float(rng.uniform(-40.0, 40.0)))
            yield from window_pairs(f"sky130-{spec.name}", big_mask, big_print, size, pad, shift,
                                    args.max_shift_px, rng)


PRINT_BORDERS = {"constant": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT,
                 "replicate": cv2.BORDER_REPLICATE}


def warped_in_frame(pairs: list[Pair], border: str) -> list[Pair]:
    """The pairs with each warped print made from its window's own unwarped print (the ``none``
    pair before it) warped inside the clip's frame, the part it does not cover filled by
    ``border`` (OpenCV's border mode: ``constant`` leaves it blank): what a known warp applied
    to delivered prints gives, instead of real pattern from the larger simulated window."""
    out: list[Pair] = []
    unwarped: np.ndarray | None = None
    for pair in pairs:
        if pair.case == "none":
            unwarped = pair.simulated
            out.append(pair)
            continue
        assert unwarped is not None, "each window's pairs start with its unwarped pair"
        simulated = delivered(unwarped, pair.truth, pair.mask.shape[0], PRINT_BORDERS[border])
        out.append(replace(pair, simulated=simulated))
    return out


def cached_pairs(kind: str, make: Callable[[], Iterator[Pair]], params: dict[str, object],
                 cache: Path) -> list[Pair]:
    """The pairs of one data set, read from ``cache`` when made before with the same parameters."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    path = cache / f"align-{kind}-{digest}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            return [Pair(str(f), str(c), m, s, t, bool(i)) for f, c, m, s, t, i in zip(
                data["family"], data["case"], data["mask"], data["simulated"], data["truth"],
                data["identifiable"], strict=True)]
    pairs = list(make())
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, family=np.array([p.family for p in pairs]), case=np.array([p.case for p in pairs]),
        mask=np.stack([p.mask for p in pairs]), simulated=np.stack([p.simulated for p in pairs]),
        truth=np.stack([p.truth for p in pairs]), identifiable=np.array([p.identifiable for p in pairs]))
    return pairs


def phase_correlation(mask: np.ndarray, simulated: np.ndarray) -> Registration:
    """OpenCV's whitened phase correlation of the raw images (translation only)."""
    window = cv2.createHanningWindow(mask.shape[::-1], cv2.CV_32F)
    # Copies: OpenCV 5's phaseCorrelate writes into its inputs.
    (dx, dy), response = cv2.phaseCorrelate(mask.copy(), simulated.copy(), window)
    # phaseCorrelate returns how far the second image is shifted relative to the first.
    matrix = np.array([[1.0, 0.0, -dx], [0.0, 1.0, -dy], [0.0, 0.0, 1.0]])
    return Registration(matrix=matrix, method="phase", quality=float(response), residual_px=None,
                        ok=True, reason="")


def better_of(first: Method, second: Method) -> Method:
    """Both registrations; the accepted one of higher quality (the first when neither is accepted)."""

    def register(mask: np.ndarray, simulated: np.ndarray) -> Registration:
        a, b = first(mask, simulated), second(mask, simulated)
        if b.ok and (not a.ok or b.quality > a.quality):
            return b
        return a

    return register


def methods(args: argparse.Namespace) -> dict[str, tuple[str, Method]]:
    """Every method by its short key (for ``--methods``): (printed name, register)."""
    base = {"max_shift_px": args.search_px}
    # earlier steps were measured with the plain least-squares polish, the default until 2026-12-07
    before: dict[str, object] = {**base, "polish_huber_k": 0.0}
    known_optics = litho.LithoSimulator(size_px=args.size_px, nm_per_px=args.nm_per_px)
    return {
        "default": ("ncc+ecc (default: sift fallback)", Aligner(AlignSettings(**base)).register),
        "mask-repeats-answered": ("ncc+ecc, a mask repeating in range answered (previous default)",
                                  Aligner(AlignSettings(**base, refuse_mask_repeats=False)).register),
        "flat-centre-correlated": ("ncc+ecc, a flat centre correlated too (previous default)",
                                   Aligner(AlignSettings(**base, min_centre_contrast=0.0)).register),
        "repeats-refused": ("ncc+ecc, ambiguous peaks refused (previous default)",
                            Aligner(AlignSettings(**base, repeat_misfit_ratio=0.0)).register),
        "least-squares": ("ncc+ecc, plain least-squares polish (previous default)",
                          Aligner(AlignSettings(**before)).register),
        **{f"{kind}-fallback": (f"default, {kind} fallback",
                                Aligner(AlignSettings(**base, fallback=kind)).register)
           for kind in ("akaze", "orb", "sift", "none")},
        # Earlier steps, on the Gaussian print model they were measured with (docs/alignment.md).
        "no-whole-overlap": ("ncc+ecc gaussian, no whole-overlap second look",
                             Aligner(AlignSettings(**before, print_model="gaussian",
                                                   whole_overlap=False)).register),
        "shift-for-compact": ("ncc+ecc gaussian, compact clips rotated get a shift",
                              Aligner(AlignSettings(**before, print_model="gaussian",
                                                    refuse_unpinned_rotation=False)).register),
        "previous-default": ("ncc+ecc gaussian, neither second look nor compact refusal",
                             Aligner(AlignSettings(**before, print_model="gaussian", whole_overlap=False,
                                                   refuse_unpinned_rotation=False)).register),
        "no-support-checks": ("ncc+ecc gaussian, no spread/stretch checks",
                              Aligner(AlignSettings(**before, print_model="gaussian",
                                                    similarity_min_spread=0.0, similarity_stretch_ratio=0.0,
                                                    whole_overlap=False,
                                                    refuse_unpinned_rotation=False)).register),
        "aerial": ("ncc+ecc, approx from litho aerial",
                   Aligner(AlignSettings(**base), aerial_model=known_optics.aerial).register),
        "repeats-in-range": ("ncc+ecc, repeats beyond the range count (previous default)",
                             Aligner(AlignSettings(**before, ignore_repeats_beyond_range=False)).register),
        "overlap-shift-only": ("ncc+ecc, second look answers a pure shift only (previous default)",
                               Aligner(AlignSettings(**before, whole_overlap_similarity=False)).register),
        **{f"huber-{k:g}": (f"ncc+ecc, Huber polish at {k:g} robust sigmas",
                            Aligner(AlignSettings(**base, polish_huber_k=k)).register)
           for k in (1.5, 2.0)},
        "gaussian-print": ("ncc+ecc, gaussian print model (previous default)",
                           Aligner(AlignSettings(**before, print_model="gaussian")).register),
        "better-model": ("ncc+ecc, better-fitting of gaussian and projection",
                         better_of(Aligner(AlignSettings(**before, print_model="gaussian")).register,
                                   Aligner(AlignSettings(**before)).register)),
        "min-gain-0.3": ("ncc+ecc, small rotation/scale kept from gain 0.3",
                         Aligner(AlignSettings(**before, similarity_min_gain=0.3)).register),
        "projection-focus": ("ncc+ecc, projection model, focus not fitted",
                             Aligner(AlignSettings(**before, fit_psf_shape=False)).register),
        "ncc": ("ncc only (no ECC)", Aligner(AlignSettings(**base, use_ecc=False)).register),
        "affine": ("ncc+ecc affine (cv2 ECC)", Aligner(AlignSettings(**base, ecc_motion="affine")).register),
        "rawmask": ("ncc+ecc against the raw mask",
                    Aligner(AlignSettings(**base, approx_print=False)).register),
        "phase": ("phaseCorrelate (whitened)", phase_correlation),
        "orb": ("orb+ransac baseline", orb_ransac_baseline),
        "sift": ("sift+ransac baseline", sift_ransac_baseline),
    }


@dataclass
class Tally:
    max_err: list[float] = field(default_factory=list)
    mean_err: list[float] = field(default_factory=list)
    accepted: list[bool] = field(default_factory=list)
    cpu_seconds: float = 0.0

    def add(self, reg: Registration, truth: np.ndarray, shape: tuple[int, int], cpu_seconds: float) -> None:
        errors = corner_errors_px(reg.matrix, truth, shape)
        self.max_err.append(float(errors.max()))
        self.mean_err.append(float(errors.mean()))
        self.accepted.append(reg.ok)
        self.cpu_seconds += cpu_seconds

    def line(self, name: str) -> str:
        e, m, ok = np.asarray(self.max_err), np.asarray(self.mean_err), np.asarray(self.accepted)
        ok_within = 100.0 * float(np.mean(e[ok] <= 1.0)) if ok.any() else float("nan")
        ok_median = float(np.median(e[ok])) if ok.any() else float("nan")
        return (f"{name:36s} {len(e):5d} {np.median(e):7.3f} {np.percentile(e, 90):7.2f} "
                f"{100 * np.mean(e <= 0.5):6.1f} {100 * np.mean(e <= 1.0):6.1f} "
                f"{100 * np.mean(m <= 1.0):8.1f} "
                f"{100 * ok.mean():6.1f} {ok_within:6.1f} {ok_median:7.3f} "
                f"{len(e) / max(self.cpu_seconds, 1e-9):8.1f}")


HEADER = (f"{'':36s} {'pairs':>5s} {'med px':>7s} {'p90 px':>7s} {'<=0.5':>6s} {'<=1px':>6s} {'mean<=1':>8s} "
          f"{'ok%':>6s} {'ok<=1':>6s} {'ok med':>7s} {'pairs/s':>8s}")


def negative_control(pairs: list[Pair], register: Method) -> None:
    """Each print against the mask of a different layout, registered by ``register`` (the
    first method chosen): the gate should refuse it."""
    shift_pairs = [p for p in pairs if p.case == "shift"]
    good_q, bad_q, bad_ok = [], [], 0
    for i, pair in enumerate(shift_pairs):
        other = shift_pairs[(i + 1 + len(shift_pairs) // 2) % len(shift_pairs)]
        good_q.append(register(pair.mask, pair.simulated).quality)
        bad = register(other.mask, pair.simulated)
        bad_q.append(bad.quality)
        bad_ok += int(bad.ok)
    print(f"\nquality gate: print vs another layout's mask, "
          f"n={len(bad_q)}: accepted {100 * bad_ok / max(len(bad_q), 1):.1f}%; quality of true pairs "
          f"p5/median {np.percentile(good_q, 5):.3f}/{np.median(good_q):.3f}, of wrong pairs "
          f"median/p95/max {np.median(bad_q):.3f}/{np.percentile(bad_q, 95):.3f}/{np.max(bad_q):.3f}")
    # The harder control: another window of the same family (same kind of pattern, often the
    # same rails or pitch), so only what differs between the two windows can refuse it.
    accepted: dict[str, list[str]] = defaultdict(list)
    for family in sorted({p.family for p in shift_pairs}):
        members = [p for p in shift_pairs if p.family == family]
        for i, pair in enumerate(members):
            other = members[(i + 1) % len(members)]
            bad = register(other.mask, pair.simulated)
            if bad.ok:
                accepted[family].append(f"{bad.method} {bad.quality:.3f}")
    n_accepted = sum(len(v) for v in accepted.values())
    print(f"print vs another window's mask of the same family, n={len(shift_pairs)}: accepted "
          f"{100 * n_accepted / max(len(shift_pairs), 1):.1f}%"
          + "".join(f"\n  {family}: {len(v)} ({', '.join(v)})" for family, v in accepted.items()))


def bars(tallies: dict[tuple[str, str, str], Tally], default: str) -> None:
    """The targets, on the default method: accuracy of what the gate accepts, and refusals."""
    print(f"\ntargets ({default}):")
    for subset in ("all", "identifiable", "self-consistent"):
        shift = tallies[(default, "shift", subset)]
        rst = tallies[(default, "rst", subset)]
        parts = []
        for case, tally in (("shift", shift), ("rst", rst)):
            e, ok = np.asarray(tally.max_err), np.asarray(tally.accepted)
            within = 100 * float(np.mean(e[ok] <= 1.0)) if ok.any() else float("nan")
            bar = 99 if case == "shift" else 95
            parts.append(f"{case}: {within:.1f}% of answered within 1 px (>= {bar}), "
                         f"{100 * (1 - ok.mean()):.1f}% refused (<= 10), "
                         f"all-pairs median {np.median(e):.3f} px")
        print(f"  {subset:15s} " + " | ".join(parts))


def evaluate(label: str, pairs: list[Pair], chosen: dict[str, tuple[str, Method]],
             args: argparse.Namespace) -> None:
    n_ident = sum(p.identifiable for p in pairs if p.case != "none")
    families = sorted({p.family for p in pairs})
    n_warped = sum(p.case != "none" for p in pairs)
    print(f"\n=== {label}: {n_warped} warped pairs ({n_ident} identifiable) from {len(families)} families, "
          f"{args.size_px} px, search {args.search_px} px, "
          f"seed{'s' if len(args.seeds) > 1 else ''} {','.join(map(str, args.seeds))}")
    tallies: dict[tuple[str, str, str], Tally] = defaultdict(Tally)
    for name, register in chosen.values():
        unwarped: Registration | None = None
        for pair in pairs:
            t0 = time.process_time()
            reg = register(pair.mask, pair.simulated)
            cpu = time.process_time() - t0
            if pair.case == "none":  # the window's own registration, before any warp
                unwarped = reg
                continue
            keys = [(name, pair.case, "all"), (name, f"{pair.case}:{pair.family}", "all")]
            if pair.identifiable:
                keys.append((name, pair.case, "identifiable"))
            for tally_key in keys:
                tallies[tally_key].add(reg, pair.truth, pair.mask.shape, cpu)
            if unwarped is not None and unwarped.ok:
                # Truth relative to what the method answers for the unwarped window: the
                # print's pixel p shows the unwarped print's pixel truth @ p.
                relative = np.asarray(unwarped.matrix) @ pair.truth
                tallies[(name, pair.case, "self-consistent")].add(reg, relative, pair.mask.shape, cpu)
    for case in ("shift", "rst"):
        for subset in ("all", "identifiable", "self-consistent"):
            print(f"\n{label}, case {case}, {subset} pairs")
            print(HEADER)
            for name, _ in chosen.values():
                print(tallies[(name, case, subset)].line(name))
    default, default_register = next(iter(chosen.values()))
    print(f"\n{label}, per family, {default}")
    print(HEADER)
    for (name, key, subset), tally in sorted(tallies.items()):
        if name == default and ":" in key and subset == "all":
            print(tally.line(key))
    bars(tallies, default)
    if args.negative_control:
        print(f"\nnegative controls ({default})")
        negative_control(pairs, default_register)


def seeded_pairs(args: argparse.Namespace, kind: str, make: Callable[[], Iterator[Pair]],
                 params: dict[str, object]) -> list[Pair]:
    """The pairs of one data set for every seed of ``args.seeds``, pooled (``make`` reads ``args.seed``),
    with the print's border as ``args.print_border`` asks."""
    pooled: list[Pair] = []
    for seed in args.seeds:
        args.seed = seed
        common = {"pairs_version": 2, "size_px": args.size_px, "max_shift_px": args.max_shift_px,
                  "nm_per_px": args.nm_per_px, "seed": seed}
        pairs = cached_pairs(kind, make, {**common, **params}, args.cache)
        pooled += pairs if args.print_border == "context" else warped_in_frame(pairs, args.print_border)
    return pooled


def parse_seeds(text: str) -> list[int]:
    """``"0"``, ``"0,3,5"`` or ``"0-7"`` (both ends included) as a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            seeds += list(range(int(first), int(last or first) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"seeds {text!r}: expected e.g. 0, 0,3,5 or 0-7") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"seeds {text!r}: no seed given")
    return seeds


def run(args: argparse.Namespace) -> None:
    cv2.setNumThreads(1)
    start = time.perf_counter()
    every = methods(args)
    keys = list(every) if args.methods == "all" else [k.strip() for k in args.methods.split(",")]
    unknown = [k for k in keys if k not in every]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(every)}")
    chosen = {k: every[k] for k in keys}
    label = "" if args.print_border == "context" else f", print warped in frame ({args.print_border} border)"
    if args.data in ("generated", "both"):
        pairs = seeded_pairs(args, "generated", lambda: generate_pairs(args),
                             {"pairs_per_family": args.pairs_per_family})
        evaluate(f"generated{label}", pairs, chosen, args)
    if args.data in ("real", "both"):
        pairs = seeded_pairs(args, "real", lambda: real_pairs(args),
                             {"windows": args.real_windows_per_family, "shift": args.real_shift_px,
                              "layers": REAL_LAYERS, "shrink": REAL_SHRINK})
        evaluate(f"real (SKY130 rows){label}", pairs, chosen, args)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s (the machine was shared with other work)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("generated", "real", "both"), default="both")
    parser.add_argument("--pairs-per-family", type=int, default=40,
                        help="generated: layout windows per family; each gives a 'shift' and an 'rst' pair")
    parser.add_argument("--real-windows-per-family", type=int, default=40,
                        help="real: row windows per layer; each gives one 'shift' and one 'rst' pair")
    parser.add_argument("--real-shift-px", type=float, default=24.0, help="real: largest true shift")
    parser.add_argument("--size-px", type=int, default=256)
    parser.add_argument("--max-shift-px", type=int, default=32,
                        help="largest generated shift (and the aligner's search range unless --search-px)")
    parser.add_argument("--search-px", type=int, default=None,
                        help="the aligner's search range; below the true shifts it exercises the keypoint "
                        "fallback (the data stay cached)")
    parser.add_argument("--nm-per-px", type=float, default=4.0)
    parser.add_argument("--seed", "--seeds", dest="seeds", type=parse_seeds, default=[0],
                        help="the data's seed, or several pooled into one evaluation: 0,3,5 or 0-7")
    parser.add_argument("--methods", default="all", help="comma-separated method keys (the first is scored "
                        "against the bars), or 'all'")
    parser.add_argument("--no-negative-control", dest="negative_control", action="store_false",
                        help="skip registering each print against another layout's mask")
    parser.add_argument("--print-border", choices=("context", *PRINT_BORDERS), default="context",
                        help="where the warped print's border comes from: 'context' (default) real pattern "
                        "of the larger simulated window; otherwise the window's own print warped in frame, "
                        "the uncovered part filled by that OpenCV border mode ('constant': blank)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".lithowatch" / "bench" / "align")
    args = parser.parse_args()
    if args.search_px is None:
        args.search_px = args.max_shift_px
    with threadpool_limits(limits=1):
        run(args)


if __name__ == "__main__":
    main()
