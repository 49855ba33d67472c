"""Registration accuracy and throughput of the alignment core, against baselines, in one run.

Pairs (mask, print) come from the litho simulator with a known print->mask transform.
The layout is simulated on a window larger than the clip and the delivered print is
that larger print resampled through the known transform, so its borders hold real
pattern -- what a farm delivers when the print's window is offset from the mask's (and,
for ``rst``, slightly rotated or scaled). Dose (+-5 %) and defocus (+-40 nm) vary.

- ``shift``: translation only, uniform in [-max_shift, max_shift] px (subpixel);
- ``rst``:   rotation in [-2, 2] deg and scale in [0.98, 1.02] about the clip centre, plus the shift.

Error = displacement of the four image corners between the true and the estimated
transform; columns give the *max* over the corners (``<=1px``) and the *mean*
(``mean<=1``). A pair is *identifiable* unless the mask repeats itself within reach of
the search (the blurred mask's central crop correlates >= 0.97 with the mask at an
offset 16 to 66 px away: gratings whose lines cross the clip, regular contact arrays);
no method can pin those down.
``ok%`` is the share the quality gate accepts, ``ok<=1`` the accuracy among those.
Throughput is pairs per CPU-second on one thread (OpenCV and BLAS limited to 1).

    python bench/align_bench.py --pairs-per-family 40
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

from shared import litho
from shared.registration import (
    Aligner,
    AlignSettings,
    Registration,
    corner_errors_px,
    orb_ransac_baseline,
    rotation_scale_shift,
)

Method = Callable[[np.ndarray, np.ndarray], Registration]
SELF_SIMILARITY_LIMIT = 0.97


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
    simulated = cv2.warpPerspective(big_print, to_big @ truth, (size_px, size_px),
                                    flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_REFLECT)
    return Pair(family, case, mask, np.clip(simulated, 0.0, 1.0).astype(np.float32), truth,
                identifiable(mask, max_shift_px))


def generate_pairs(args: argparse.Namespace) -> Iterator[Pair]:
    """One ``shift`` and one ``rst`` pair per simulated layout window."""
    rng = np.random.default_rng(args.seed)
    size, shift = args.size_px, args.max_shift_px
    pad = shift + math.ceil(size * (math.radians(2.0) + 0.02)) + 16
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
            t = (float(rng.uniform(-shift, shift)), float(rng.uniform(-shift, shift)))
            yield make_pair(family, "shift", big_mask, big_print, size, pad,
                            rotation_scale_shift(size, t, 0.0, 1.0), shift)
            t = (float(rng.uniform(-shift, shift)), float(rng.uniform(-shift, shift)))
            angle, scale = float(rng.uniform(-2.0, 2.0)), float(rng.uniform(0.98, 1.02))
            yield make_pair(family, "rst", big_mask, big_print, size, pad,
                            rotation_scale_shift(size, t, angle, scale), shift)


def phase_correlation(mask: np.ndarray, simulated: np.ndarray) -> Registration:
    """OpenCV's whitened phase correlation of the raw images (translation only)."""
    window = cv2.createHanningWindow(mask.shape[::-1], cv2.CV_32F)
    # Copies: OpenCV 5's phaseCorrelate writes into its inputs.
    (dx, dy), response = cv2.phaseCorrelate(mask.copy(), simulated.copy(), window)
    # phaseCorrelate returns how far the second image is shifted relative to the first.
    matrix = np.array([[1.0, 0.0, -dx], [0.0, 1.0, -dy], [0.0, 0.0, 1.0]])
    return Registration(matrix=matrix, method="phase", quality=float(response), residual_px=None,
                        ok=True, reason="")


def methods(args: argparse.Namespace) -> dict[str, Method]:
    base = {"max_shift_px": args.max_shift_px}
    known_optics = litho.LithoSimulator(size_px=args.size_px, nm_per_px=args.nm_per_px)
    return {
        "ncc+ecc, gaussian approx (default)": Aligner(AlignSettings(**base)).register,
        "ncc+ecc, approx from litho aerial": Aligner(AlignSettings(**base),
                                                     aerial_model=known_optics.aerial).register,
        "ncc only, gaussian approx": Aligner(AlignSettings(**base, use_ecc=False)).register,
        "ncc+ecc affine (cv2 ECC)": Aligner(AlignSettings(**base, ecc_motion="affine")).register,
        "ncc+ecc against the raw mask": Aligner(AlignSettings(**base, approx_print=False)).register,
        "phaseCorrelate (whitened)": phase_correlation,
        "orb+ransac baseline": orb_ransac_baseline,
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
        return (f"{name:36s} {len(e):5d} {np.median(e):7.3f} {np.percentile(e, 90):7.2f} "
                f"{100 * np.mean(e <= 0.5):6.1f} {100 * np.mean(e <= 1.0):6.1f} "
                f"{100 * np.mean(m <= 1.0):8.1f} "
                f"{100 * ok.mean():6.1f} {ok_within:6.1f} {len(e) / max(self.cpu_seconds, 1e-9):8.1f}")


HEADER = (f"{'':36s} {'pairs':>5s} {'med px':>7s} {'p90 px':>7s} {'<=0.5':>6s} {'<=1px':>6s} {'mean<=1':>8s} "
          f"{'ok%':>6s} {'ok<=1':>6s} {'pairs/s':>8s}")


def negative_control(pairs: list[Pair], args: argparse.Namespace) -> None:
    """Each print against the mask of a different layout: the gate should refuse it."""
    aligner = Aligner(AlignSettings(max_shift_px=args.max_shift_px))
    shift_pairs = [p for p in pairs if p.case == "shift"]
    good_q, bad_q, bad_ok = [], [], 0
    for i, pair in enumerate(shift_pairs):
        other = shift_pairs[(i + 1 + len(shift_pairs) // 2) % len(shift_pairs)]
        good_q.append(aligner.register(pair.mask, pair.simulated).quality)
        bad = aligner.register(other.mask, pair.simulated)
        bad_q.append(bad.quality)
        bad_ok += int(bad.ok)
    print(f"\nquality gate (floor {aligner.settings.quality_floor}): print vs another layout's mask, "
          f"n={len(bad_q)}: accepted {100 * bad_ok / max(len(bad_q), 1):.1f}%; quality of true pairs "
          f"p5/median {np.percentile(good_q, 5):.3f}/{np.median(good_q):.3f}, of wrong pairs "
          f"median/p95/max {np.median(bad_q):.3f}/{np.percentile(bad_q, 95):.3f}/{np.max(bad_q):.3f}")


def bars(tallies: dict[tuple[str, str, str], Tally], default: str) -> None:
    """The targets, on the default method."""
    print("\ntargets (default method):")
    for subset in ("all", "identifiable"):
        shift = tallies[(default, "shift", subset)]
        rst = tallies[(default, "rst", subset)]
        e_shift, e_rst = np.asarray(shift.max_err), np.asarray(rst.max_err)
        m_rst = np.asarray(rst.mean_err)
        print(f"  {subset:12s} shift: median {np.median(e_shift):.3f} px (<= 0.25), "
              f"{100 * np.mean(e_shift <= 1):.1f}% within 1 px (>= 99) | rst: "
              f"{100 * np.mean(e_rst <= 1):.1f}% max-corner / {100 * np.mean(m_rst <= 1):.1f}% mean-corner "
              f"within 1 px (>= 95)")


def run(args: argparse.Namespace) -> None:
    cv2.setNumThreads(1)
    start = time.perf_counter()
    pairs = list(generate_pairs(args))
    n_ident = sum(p.identifiable for p in pairs)
    print(f"{len(pairs)} pairs ({n_ident} identifiable) from {len(litho.FAMILIES)} families, "
          f"{args.size_px} px, shifts up to {args.max_shift_px} px, seed {args.seed}; "
          f"generated in {time.perf_counter() - start:.0f} s")
    tallies: dict[tuple[str, str, str], Tally] = defaultdict(Tally)
    all_methods = methods(args)
    default = next(iter(all_methods))
    for name, register in all_methods.items():
        for pair in pairs:
            t0 = time.process_time()
            reg = register(pair.mask, pair.simulated)
            cpu = time.process_time() - t0
            keys = [(name, pair.case, "all"), (name, f"{pair.case}:{pair.family}", "all")]
            if pair.identifiable:
                keys.append((name, pair.case, "identifiable"))
            for tally_key in keys:
                tallies[tally_key].add(reg, pair.truth, pair.mask.shape, cpu)
    for case in ("shift", "rst"):
        for subset in ("all", "identifiable"):
            print(f"\ncase {case}, {subset} pairs")
            print(HEADER)
            for name in all_methods:
                print(tallies[(name, case, subset)].line(name))
    print(f"\nper family, {default}")
    print(HEADER)
    for (name, key, subset), tally in sorted(tallies.items()):
        if name == default and ":" in key and subset == "all":
            print(tally.line(key))
    bars(tallies, default)
    negative_control(pairs, args)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s (the machine was shared with other work)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs-per-family", type=int, default=40,
                        help="layout windows per family; each gives one 'shift' and one 'rst' pair")
    parser.add_argument("--size-px", type=int, default=256)
    parser.add_argument("--max-shift-px", type=int, default=32)
    parser.add_argument("--nm-per-px", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with threadpool_limits(limits=1):
        run(args)


if __name__ == "__main__":
    main()
