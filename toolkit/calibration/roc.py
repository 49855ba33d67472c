"""ROC and precision-recall curves of two score populations, on scikit-learn.

Convention throughout calibration: the *positive* population is the one that
should score higher, and a score ``>= threshold`` is called positive. For novelty
the positives are novel results scored by ``novelty_score``; for pair
similarities the positives are "same pattern" pairs scored by cosine similarity.

The curves, AUROC and average precision come from :mod:`sklearn.metrics`
(``roc_curve``, ``precision_recall_curve``, ``roc_auc_score``,
``average_precision_score``): a dependency already, tested far beyond what a
copy here would be, and the reference the evaluation reports are compared with.
What stays here is the project's shape around them: two populations in (checked
by :func:`check_scores`) rather than labels and scores, and thresholds at *cut
points*. scikit-learn puts each threshold on an observed score (and ``inf`` for
"nothing is positive"); here the cut points are the midpoints between
consecutive distinct observed scores (plus one below the minimum and one above
the maximum), so a recommended threshold never sits exactly on an observed score
and a perfect separator yields a threshold strictly inside the gap. Both call the
same scores positive at each point: ``score >= u`` for an observed ``u`` and
``score >= (u_below + u) / 2`` select the same scores. :class:`Sweep` holds the
confusion counts at every cut point, from which the threshold candidates
(F1-maximising and others, :mod:`toolkit.calibration.thresholds`) are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn import metrics

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
    """Midpoints between consecutive distinct scores, plus one below and one above (ascending)."""
    unique = np.unique(scores)
    mids = (unique[:-1] + unique[1:]) / 2.0
    margin = max(END_MARGIN, 1e-3 * float(unique[-1] - unique[0]))
    return np.concatenate([[unique[0] - margin], mids, [unique[-1] + margin]])


def _labelled(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's input: labels (1 for positives) and scores, positives first."""
    labels = np.concatenate([np.ones(pos.size, dtype=np.int8), np.zeros(neg.size, dtype=np.int8)])
    return labels, np.concatenate([pos, neg])


def _check_points(found: int, cuts: np.ndarray, what: str) -> None:
    # One point per distinct score plus "nothing positive": what the cut points assume.
    if found != cuts.size:
        raise RuntimeError(f"scikit-learn's {what} gave {found} points, expected {cuts.size}")


def _roc_points(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, cut points), strictest first: one point per distinct score and (0, 0)."""
    labels, scores = _labelled(pos, neg)
    fpr, tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    cuts = cut_points(scores)[::-1]
    _check_points(fpr.size, cuts, "roc_curve")
    return fpr, tpr, cuts


def sweep(positives: np.ndarray | list[float], negatives: np.ndarray | list[float]) -> Sweep:
    """Confusion counts at every cut point (thresholds ascending), read off scikit-learn's ROC."""
    pos = check_scores(positives, "positive scores")
    neg = check_scores(negatives, "negative scores")
    fpr, tpr, cuts = _roc_points(pos, neg)
    # The rates are counts over population sizes; rounding gives the counts back exactly.
    tp = np.rint(tpr[::-1] * pos.size).astype(np.int64)
    fp = np.rint(fpr[::-1] * neg.size).astype(np.int64)
    return Sweep(cuts[::-1].copy(), tp, fp, pos.size, neg.size)


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
    labels, scores = _labelled(
        check_scores(positives, "positive scores"), check_scores(negatives, "negative scores")
    )
    return float(metrics.roc_auc_score(labels, scores))


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
    pos = check_scores(positives, "positive scores")
    neg = check_scores(negatives, "negative scores")
    fpr, tpr, cuts = _roc_points(pos, neg)
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=cuts, auc=auroc(pos, neg))


def pr_curve(positives: np.ndarray | list[float], negatives: np.ndarray | list[float]) -> PrCurve:
    """Precision-recall points, strictest first, and the step-wise average precision.

    Where nothing is called positive (the strictest cut point) precision is 1.0,
    as scikit-learn's curve ends.
    """
    pos = check_scores(positives, "positive scores")
    neg = check_scores(negatives, "negative scores")
    labels, scores = _labelled(pos, neg)
    precision, recall, _ = metrics.precision_recall_curve(labels, scores)  # most lenient first
    cuts = cut_points(scores)
    _check_points(precision.size, cuts, "precision_recall_curve")
    return PrCurve(
        recall=recall[::-1].copy(),
        precision=precision[::-1].copy(),
        thresholds=cuts[::-1].copy(),
        average_precision=float(metrics.average_precision_score(labels, scores)),
        prevalence=pos.size / (pos.size + neg.size),
    )
