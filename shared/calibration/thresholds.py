"""Candidate thresholds between two score populations, and the rule that picks one.

Candidates (positives score higher; ``score >= threshold`` is positive):

- ``f1_max``: the cut point with the highest F1 (the middle one of a tied plateau);
- ``precision_target``: the most lenient cut point whose precision reaches a target,
  with the recall that costs;
- ``youden_j``: the cut point maximising TPR - FPR (prevalence-free);
- ``valley``: the minimum of the smoothed score density between the two modes. The
  density is the equal-weight mixture of each population's smoothed histogram, so a
  rare population still forms a peak.

:func:`recommend_threshold` picks one and says why in one sentence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from shared.calibration.roc import Sweep, auroc, check_scores, confusion_at, sweep
from shared.errors import ContractError

MIN_POPULATION_DEFAULT = 10
VALLEY_GRID_BINS = 2048
VALLEY_MAX_DEPTH_RATIO = 0.9
TIE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class ThresholdCandidate:
    """One way of placing the threshold, with what it scores on the data it was fitted on."""

    method: str
    threshold: float | None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    fpr: float | None = None
    note: str = ""

    def as_dict(self) -> dict[str, float | str | None]:
        return asdict(self)


@dataclass(frozen=True)
class Recommendation:
    method: str
    threshold: float
    reason: str
    candidates: tuple[ThresholdCandidate, ...]
    auroc: float
    n_positive: int
    n_negative: int

    def candidate(self, method: str) -> ThresholdCandidate | None:
        return next((c for c in self.candidates if c.method == method), None)


def _middle_of_best(values: np.ndarray) -> int:
    best = np.flatnonzero(values >= values.max() - TIE_TOLERANCE)
    return int(best[best.size // 2])


def _scored(method: str, sw: Sweep, index: int, note: str) -> ThresholdCandidate:
    return ThresholdCandidate(
        method=method,
        threshold=float(sw.thresholds[index]),
        precision=float(sw.precision[index]),
        recall=float(sw.recall[index]),
        f1=float(sw.f1[index]),
        fpr=float(sw.fpr[index]),
        note=note,
    )


def f1_max_threshold(sw: Sweep) -> ThresholdCandidate:
    index = _middle_of_best(sw.f1)
    return _scored("f1_max", sw, index, f"highest F1 over {sw.thresholds.size} cut points")


def youden_threshold(sw: Sweep) -> ThresholdCandidate:
    j = sw.recall - sw.fpr
    index = _middle_of_best(j)
    return _scored("youden_j", sw, index, f"max TPR - FPR = {j[index]:.3f}")


def precision_target_threshold(sw: Sweep, target: float) -> ThresholdCandidate:
    """The lowest (highest-recall) cut point whose precision is at least ``target``."""
    ok = np.flatnonzero((sw.precision >= target) & (sw.tp > 0))
    if ok.size == 0:
        return ThresholdCandidate(
            "precision_target", None, note=f"no threshold reaches precision {target:.3f}"
        )
    index = int(ok[0])
    recall = float(sw.recall[index])
    return _scored(
        "precision_target", sw, index, f"precision >= {target:.3f} costs recall {1 - recall:.3f}"
    )


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


def valley_threshold(positives: np.ndarray, negatives: np.ndarray) -> ThresholdCandidate:
    """Minimum of the equal-weight mixture density between the negative and positive modes."""
    centres, f_pos, f_neg = smoothed_densities(positives, negatives)
    mode_neg, mode_pos = int(np.argmax(f_neg)), int(np.argmax(f_pos))
    if mode_pos <= mode_neg:
        return ThresholdCandidate("valley", None, note="positive mode is not above the negative mode")
    mixture = 0.5 * (f_pos + f_neg)
    between = mixture[mode_neg : mode_pos + 1]
    index = mode_neg + int(np.argmin(between))
    lower_peak = float(min(mixture[mode_neg], mixture[mode_pos]))
    depth_ratio = float(mixture[index]) / lower_peak if lower_peak > 0 else 1.0
    if depth_ratio >= VALLEY_MAX_DEPTH_RATIO:
        return ThresholdCandidate(
            "valley", None, note=f"no clear valley (density {depth_ratio:.2f} of the lower peak)"
        )
    threshold = float(centres[index])
    scored = confusion_at(positives, negatives, threshold)
    return ThresholdCandidate(
        "valley",
        threshold,
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
) -> tuple[ThresholdCandidate, ...]:
    pos = check_scores(positives, "positive scores")
    neg = check_scores(negatives, "negative scores")
    sw = sweep(pos, neg)
    candidates = [f1_max_threshold(sw), youden_threshold(sw), valley_threshold(pos, neg)]
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
    otherwise F1-max when both populations have at least ``min_population``
    scores; otherwise Youden's J, which does not depend on the class ratio of a
    handful of scores. The valley is reported, never picked: on synthetic
    populations (``python -m shared.calibration.selfcheck``) it generalised worse
    than F1-max and Youden at every size tried, badly so when the novel scores are
    bimodal.
    """
    pos = check_scores(positives, "positive scores")
    neg = check_scores(negatives, "negative scores")
    candidates = candidate_thresholds(pos, neg, precision_target)
    by_method = {c.method: c for c in candidates}
    sizes = f"{pos.size} {positive_name} and {neg.size} {negative_name}"
    chosen: ThresholdCandidate
    target = by_method.get("precision_target")
    f1_max = by_method["f1_max"]
    if target is not None and target.threshold is not None:
        chosen = target
        reason = (
            f"precision_target: the operator asked for precision >= {precision_target:.3f}; the most "
            f"lenient threshold reaching it keeps recall {target.recall:.3f} (F1 {target.f1:.3f})."
        )
    elif min(pos.size, neg.size) >= min_population:
        chosen = f1_max
        missed = "" if target is None else f" (precision {precision_target:.3f} is unreachable)"
        reason = (
            f"f1_max: both populations are large enough ({sizes}, each >= {min_population}) for the "
            f"F1 curve to be stable; F1 {f1_max.f1:.3f} at precision {f1_max.precision:.3f}, "
            f"recall {f1_max.recall:.3f}{missed}."
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
