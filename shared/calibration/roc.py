"""ROC and precision-recall curves of two score populations.

Convention throughout calibration: the *positive* population is the one that
should score higher, and a score ``>= threshold`` is called positive. For novelty
the positives are novel results scored by ``novelty_score``; for pair
similarities the positives are "same pattern" pairs scored by cosine similarity.

Cut points are the midpoints between consecutive distinct observed scores (plus
one below the minimum and one above the maximum), so a recommended threshold
never sits exactly on an observed score and a perfect separator yields a
threshold strictly inside the gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from shared.errors import ContractError

END_MARGIN = 1e-6


def check_scores(scores: np.ndarray | list[float], name: str) -> np.ndarray:
    """A non-empty finite 1-D float64 array."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise ContractError(f"{name}: expected a 1-D array of scores, got shape {array.shape}")
    if array.size == 0:
        raise ContractError(f"{name}: no scores")
    if not np.isfinite(array).all():
        raise ContractError(f"{name}: contains NaN or infinity")
    return array


@dataclass(frozen=True)
class Sweep:
    """Confusion counts at every cut point, thresholds ascending."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_pos: int
    n_neg: int

    @property
    def fn(self) -> np.ndarray:
        return self.n_pos - self.tp

    @property
    def tn(self) -> np.ndarray:
        return self.n_neg - self.fp

    @property
    def recall(self) -> np.ndarray:
        return self.tp / self.n_pos

    @property
    def fpr(self) -> np.ndarray:
        return self.fp / self.n_neg

    @property
    def precision(self) -> np.ndarray:
        """Precision; 1.0 where nothing is called positive (the usual PR-curve end point)."""
        called = self.tp + self.fp
        return np.where(called > 0, self.tp / np.maximum(called, 1), 1.0)

    @property
    def f1(self) -> np.ndarray:
        denominator = 2 * self.tp + self.fp + self.fn
        return np.where(denominator > 0, 2 * self.tp / np.maximum(denominator, 1), 0.0)


def cut_points(scores: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive distinct scores, plus one below and one above."""
    unique = np.unique(scores)
    mids = (unique[:-1] + unique[1:]) / 2.0
    margin = max(END_MARGIN, 1e-3 * float(unique[-1] - unique[0]))
    return np.concatenate([[unique[0] - margin], mids, [unique[-1] + margin]])


def count_at(thresholds: np.ndarray, sorted_scores: np.ndarray) -> np.ndarray:
    """How many of ``sorted_scores`` are ``>= t`` for each ``t``."""
    return sorted_scores.size - np.searchsorted(sorted_scores, thresholds, side="left")


def sweep(positives: np.ndarray | list[float], negatives: np.ndarray | list[float]) -> Sweep:
    pos = np.sort(check_scores(positives, "positive scores"))
    neg = np.sort(check_scores(negatives, "negative scores"))
    thresholds = cut_points(np.concatenate([pos, neg]))
    return Sweep(thresholds, count_at(thresholds, pos), count_at(thresholds, neg), pos.size, neg.size)


def confusion_at(
    positives: np.ndarray | list[float], negatives: np.ndarray | list[float], threshold: float
) -> dict[str, float]:
    """Precision, recall, F1 and false-positive rate of ``score >= threshold``."""
    pos = check_scores(positives, "positive scores")
    neg = check_scores(negatives, "negative scores")
    tp = int((pos >= threshold).sum())
    fp = int((neg >= threshold).sum())
    fn = pos.size - tp
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / pos.size
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr": fp / neg.size,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": neg.size - fp,
    }


def auroc(positives: np.ndarray | list[float], negatives: np.ndarray | list[float]) -> float:
    """Area under the ROC curve = P(positive scores above negative), ties counting half."""
    pos = check_scores(positives, "positive scores")
    neg = check_scores(negatives, "negative scores")
    ranks = rankdata(np.concatenate([pos, neg]))
    rank_sum = float(ranks[: pos.size].sum())
    u_statistic = rank_sum - pos.size * (pos.size + 1) / 2.0
    return u_statistic / (pos.size * neg.size)


@dataclass(frozen=True)
class RocCurve:
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


@dataclass(frozen=True)
class PrCurve:
    recall: np.ndarray
    precision: np.ndarray
    thresholds: np.ndarray
    average_precision: float
    prevalence: float


def roc_curve(positives: np.ndarray | list[float], negatives: np.ndarray | list[float]) -> RocCurve:
    """ROC points from the strictest cut point (0, 0) to the most lenient (1, 1)."""
    result = sweep(positives, negatives)
    order = np.argsort(-result.thresholds)
    return RocCurve(
        fpr=result.fpr[order],
        tpr=result.recall[order],
        thresholds=result.thresholds[order],
        auc=auroc(positives, negatives),
    )


def pr_curve(positives: np.ndarray | list[float], negatives: np.ndarray | list[float]) -> PrCurve:
    """Precision-recall points, strictest first, and the step-wise average precision."""
    result = sweep(positives, negatives)
    order = np.argsort(-result.thresholds)
    recall = result.recall[order]
    precision = result.precision[order]
    average_precision = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    return PrCurve(
        recall=recall,
        precision=precision,
        thresholds=result.thresholds[order],
        average_precision=average_precision,
        prevalence=result.n_pos / (result.n_pos + result.n_neg),
    )
