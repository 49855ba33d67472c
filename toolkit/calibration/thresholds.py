"""Candidate thresholds between two score populations, and the rule that picks one.

Candidates (positives score higher; ``score >= threshold`` is positive):

- ``f1_max``: the cut point with the highest F1 (the middle one of a tied plateau);
- ``f1_smooth``: the cut point with the highest F1 on kernel-smoothed counts: each
  score spreads over a Gaussian (Silverman's bandwidth of its population), so the
  choice follows the shape of both populations near the cut rather than the exact
  places of the few scores there, which a fresh sample moves;
- ``precision_target``: the most lenient cut point whose precision reaches a target,
  with the recall that costs;
- ``youden_j``: the cut point maximising TPR - FPR (prevalence-free);
- ``valley``: the minimum of the smoothed score density between the two modes. The
  density is the equal-weight mixture of each population's smoothed histogram, so a
  rare population still forms a peak.

:func:`recommend_threshold` picks one and says why in one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import ndtr

from shared.errors import ContractError
from shared.index.thresholds import CandidateThreshold
from toolkit.calibration.roc import Sweep, auroc, check_scores, confusion_at, sweep

MIN_POPULATION_DEFAULT = 10
VALLEY_GRID_BINS = 2048
VALLEY_MAX_DEPTH_RATIO = 0.9
TIE_TOLERANCE = 1e-12
SMOOTH_MAX_CUTS = 4096
SMOOTH_CHUNK = 256


@dataclass(frozen=True)
class Recommendation:
    method: str
    threshold: float
    reason: str
    candidates: tuple[CandidateThreshold, ...]
    auroc: float
    n_positive: int
    n_negative: int

    def candidate(self, method: str) -> CandidateThreshold | None:
        return next((c for c in self.candidates if c.method == method), None)


def _middle_of_best(values: np.ndarray) -> int:
    best = np.flatnonzero(values >= values.max() - TIE_TOLERANCE)
    return int(best[best.size // 2])


def _scored(method: str, sw: Sweep, index: int, note: str) -> CandidateThreshold:
    return CandidateThreshold(
        method=method,
        threshold=float(sw.thresholds[index]),
        precision=float(sw.precision[index]),
        recall=float(sw.recall[index]),
        f1=float(sw.f1[index]),
        fpr=float(sw.fpr[index]),
        note=note,
    )


def f1_max_threshold(sw: Sweep) -> CandidateThreshold:
    index = _middle_of_best(sw.f1)
    return _scored("f1_max", sw, index, f"highest F1 over {sw.thresholds.size} cut points")


def smoothed_counts(thresholds: np.ndarray, scores: np.ndarray, bandwidth: float) -> np.ndarray:
    """Expected number of ``scores`` at or above each threshold when each score is a Gaussian."""
    out = np.empty(thresholds.size, dtype=np.float64)
    for start in range(0, thresholds.size, SMOOTH_CHUNK):
        part = thresholds[start : start + SMOOTH_CHUNK]
        out[start : start + part.size] = ndtr((scores[None, :] - part[:, None]) / bandwidth).sum(axis=1)
    return out


def smoothed_f1(positives: np.ndarray, negatives: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """F1 at each threshold from kernel-smoothed counts (Silverman bandwidth per population)."""
    both = np.concatenate([positives, negatives])
    fallback = max(float(np.ptp(both)), 1e-3) * 0.02
    tp = smoothed_counts(thresholds, positives, _bandwidth(positives, fallback))
    fp = smoothed_counts(thresholds, negatives, _bandwidth(negatives, fallback))
    return 2 * tp / (tp + fp + positives.size)


def f1_smooth_threshold(positives: np.ndarray, negatives: np.ndarray, sw: Sweep) -> CandidateThreshold:
    """The cut point with the highest smoothed F1, scored (unsmoothed) on the data it was fitted on.

    Only cut points whose raw F1 is within one standard error of the raw best
    (``sqrt(F1 (1 - F1) / n_positive)``) are considered: smoothing may move the
    cut along a flat stretch of the F1 curve, never to a place these scores
    clearly reject (where one global bandwidth blurs a narrow mode of a
    multimodal population, unguarded smoothing lost far more than it won). When
    some cut points separate the populations perfectly, the guard leaves only
    those, so the threshold stays in the gap. Cut points beyond
    :data:`SMOOTH_MAX_CUTS` are thinned to that many evenly spaced ones.
    """
    best = float(sw.f1.max())
    standard_error = float(np.sqrt(max(best * (1.0 - best), 0.0) / sw.n_pos))
    candidates = np.flatnonzero(sw.f1 >= best - standard_error - TIE_TOLERANCE)
    if candidates.size > SMOOTH_MAX_CUTS:
        candidates = candidates[np.linspace(0, candidates.size - 1, SMOOTH_MAX_CUTS).round().astype(np.int64)]
    values = smoothed_f1(positives, negatives, sw.thresholds[candidates])
    index = int(candidates[_middle_of_best(values)])
    return _scored(
        "f1_smooth",
        sw,
        index,
        f"highest kernel-smoothed F1 ({float(values.max()):.3f}) over the {candidates.size} cut points "
        f"within one standard error ({standard_error:.3f}) of the best raw F1",
    )


def youden_threshold(sw: Sweep) -> CandidateThreshold:
    j = sw.recall - sw.fpr
    index = _middle_of_best(j)
    return _scored("youden_j", sw, index, f"max TPR - FPR = {j[index]:.3f}")


def precision_target_threshold(sw: Sweep, target: float) -> CandidateThreshold:
    """The lowest (highest-recall) cut point whose precision is at least ``target``."""
    ok = np.flatnonzero((sw.precision >= target) & (sw.tp > 0))
    if ok.size == 0:
        return CandidateThreshold(
            method="precision_target", threshold=None, note=f"no threshold reaches precision {target:.3f}"
        )
    index = int(ok[0])
    recall = float(sw.recall[index])
    return _scored("precision_target", sw, index, f"precision >= {target:.3f} costs recall {1 - recall:.3f}")


def _bandwidth(values: np.ndarray, fallback: float) -> float:
    """Silverman's rule; a fallback for constant populations."""
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    q75, q25 = np.percentile(values, [75, 25])
    spread = min(std, float(q75 - q25) / 1.34) if q75 > q25 else std
    width = 0.9 * spread * values.size ** (-0.2)
    return width if width > 0 else fallback


def smoothed_densities(
    positives: np.ndarray, negatives: np.ndarray, bins: int = VALLEY_GRID_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid centres and each population's Gaussian-smoothed histogram density on it."""
    both = np.concatenate([positives, negatives])
    span = float(both.max() - both.min())
    fallback = max(span, 1e-3) * 0.02
    widths = [_bandwidth(positives, fallback), _bandwidth(negatives, fallback)]
    lo = float(both.min()) - 3 * max(widths)
    hi = float(both.max()) + 3 * max(widths)
    edges = np.linspace(lo, hi, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2.0
    bin_width = edges[1] - edges[0]
    densities = []
    for values, width in zip((positives, negatives), widths, strict=True):
        counts, _ = np.histogram(values, bins=edges)
        smooth = gaussian_filter1d(counts.astype(np.float64), sigma=width / bin_width, mode="constant")
        densities.append(smooth / (smooth.sum() * bin_width))
    return centres, densities[0], densities[1]


def valley_threshold(positives: np.ndarray, negatives: np.ndarray) -> CandidateThreshold:
    """Minimum of the equal-weight mixture density between the negative and positive modes."""
    centres, f_pos, f_neg = smoothed_densities(positives, negatives)
    mode_neg, mode_pos = int(np.argmax(f_neg)), int(np.argmax(f_pos))
    if mode_pos <= mode_neg:
        return CandidateThreshold(
            method="valley", threshold=None, note="positive mode is not above the negative mode"
        )
    mixture = 0.5 * (f_pos + f_neg)
    between = mixture[mode_neg : mode_pos + 1]
    index = mode_neg + int(np.argmin(between))
    lower_peak = float(min(mixture[mode_neg], mixture[mode_pos]))
    depth_ratio = float(mixture[index]) / lower_peak if lower_peak > 0 else 1.0
    if depth_ratio >= VALLEY_MAX_DEPTH_RATIO:
        return CandidateThreshold(
            method="valley",
            threshold=None,
            note=f"no clear valley (density {depth_ratio:.2f} of the lower peak)",
        )
    threshold = float(centres[index])
    scored = confusion_at(positives, negatives, threshold)
    return CandidateThreshold(
        method="valley",
        threshold=threshold,
        precision=scored["precision"],
        recall=scored["recall"],
        f1=scored["f1"],
        fpr=scored["fpr"],
        note=f"valley density {depth_ratio:.2f} of the lower peak",
    )


def candidate_thresholds(
    positives: np.ndarray | list[float],
    negatives: np.ndarray | list[float],
    precision_target: float | None = None,
) -> tuple[CandidateThreshold, ...]:
    pos = check_scores(positives, "positive scores")
    neg = check_scores(negatives, "negative scores")
    sw = sweep(pos, neg)
    candidates = [
        f1_smooth_threshold(pos, neg, sw),
        f1_max_threshold(sw),
        youden_threshold(sw),
        valley_threshold(pos, neg),
    ]
    if precision_target is not None:
        candidates.insert(1, precision_target_threshold(sw, precision_target))
    return tuple(candidates)


def recommend_threshold(
    positives: np.ndarray | list[float],
    negatives: np.ndarray | list[float],
    *,
    precision_target: float | None = None,
    min_population: int = MIN_POPULATION_DEFAULT,
    positive_name: str = "positive",
    negative_name: str = "negative",
) -> Recommendation:
    """Pick a threshold and explain the choice in one sentence.

    Rule: a precision target the operator asked for wins when it is reachable;
    otherwise the kernel-smoothed F1-max when both populations have at least
    ``min_population`` scores; otherwise Youden's J, which does not depend on the
    class ratio of a handful of scores. The raw F1-max is reported beside it: it
    is the best cut *for these scores*, but with a few hundred scores a fresh
    sample moves it, and the smoothed one lost less F1 on held-out splits (the
    seed sweep of :mod:`toolkit.calibration.gap` on generated farm data, and the
    synthetic populations of ``python -m toolkit.calibration.selfcheck``). The
    valley is reported, never picked: it generalised worse than the others,
    badly so when the novel scores are bimodal.
    """
    pos = check_scores(positives, "positive scores")
    neg = check_scores(negatives, "negative scores")
    candidates = candidate_thresholds(pos, neg, precision_target)
    by_method = {c.method: c for c in candidates}
    sizes = f"{pos.size} {positive_name} and {neg.size} {negative_name}"
    chosen: CandidateThreshold
    target = by_method.get("precision_target")
    f1_smooth = by_method["f1_smooth"]
    if target is not None and target.threshold is not None:
        chosen = target
        reason = (
            f"precision_target: the operator asked for precision >= {precision_target:.3f}; the most "
            f"lenient threshold reaching it keeps recall {target.recall:.3f} (F1 {target.f1:.3f})."
        )
    elif min(pos.size, neg.size) >= min_population:
        chosen = f1_smooth
        missed = "" if target is None else f" (precision {precision_target:.3f} is unreachable)"
        reason = (
            f"f1_smooth: both populations are large enough ({sizes}, each >= {min_population}) to "
            f"estimate their shape near the cut; F1 maximised on kernel-smoothed counts, which a fresh "
            f"sample moves less than the raw F1-max; F1 {f1_smooth.f1:.3f} at precision "
            f"{f1_smooth.precision:.3f}, recall {f1_smooth.recall:.3f} on these scores{missed}."
        )
    else:
        chosen = by_method["youden_j"]
        reason = (
            f"youden_j: a population is tiny ({sizes}, fewer than {min_population} in one), so the "
            f"prevalence-free TPR - FPR is maximised instead of F1, which hinges on the class ratio "
            f"of a handful of scores; {chosen.note}."
        )
    if chosen.threshold is None:  # every branch above picks a candidate that has one
        raise ContractError(f"{chosen.method} produced no threshold")
    return Recommendation(
        method=chosen.method,
        threshold=chosen.threshold,
        reason=reason,
        candidates=candidates,
        auroc=auroc(pos, neg),
        n_positive=int(pos.size),
        n_negative=int(neg.size),
    )
