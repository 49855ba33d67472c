"""Novelty detection quality: known queries vs held-out novel queries against a library."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shared.calibration.roc import auroc, check_scores, confusion_at, pr_curve, sweep
from shared.calibration.similarity import novelty_scores
from shared.evaluation.retrieval import Metric, comparable_matrix, similarity_from_dot


@dataclass(frozen=True)
class NoveltyMetrics:
    auroc: float
    average_precision: float
    threshold: float
    precision: float
    recall: float
    f1: float
    fpr: float
    best_f1: float
    best_f1_threshold: float
    n_known: int
    n_novel: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def novelty_metrics(
    known_scores: np.ndarray, novel_scores: np.ndarray, threshold: float | None = None
) -> NoveltyMetrics:
    """AUROC, average precision and P/R/F1 of ``novelty_score >= threshold``.

    Without a threshold the F1-max one is used (and is then optimistic: fitted on
    the very scores it is judged on).
    """
    known = check_scores(known_scores, "known scores")
    novel = check_scores(novel_scores, "novel scores")
    sw = sweep(novel, known)
    best = int(np.argmax(sw.f1))
    chosen = float(sw.thresholds[best]) if threshold is None else float(threshold)
    at = confusion_at(novel, known, chosen)
    return NoveltyMetrics(
        auroc=auroc(novel, known),
        average_precision=pr_curve(novel, known).average_precision,
        threshold=chosen,
        precision=at["precision"],
        recall=at["recall"],
        f1=at["f1"],
        fpr=at["fpr"],
        best_f1=float(sw.f1[best]),
        best_f1_threshold=float(sw.thresholds[best]),
        n_known=int(known.size),
        n_novel=int(novel.size),
    )


def feature_novelty_scores(
    queries: np.ndarray, library: np.ndarray, metric: Metric = "cosine", block_size: int = 1024
) -> np.ndarray:
    """``1 - max similarity to the library`` under any retrieval metric (baselines too)."""
    if metric == "cosine":
        return novelty_scores(queries, library, block_size=block_size)
    q = comparable_matrix(queries, metric)
    lib = comparable_matrix(library, metric)
    out = np.empty(q.shape[0], dtype=np.float64)
    for start in range(0, q.shape[0], block_size):
        best = (q[start : start + block_size] @ lib.T).max(axis=1)
        out[start : start + block_size] = 1.0 - similarity_from_dot(best, metric)
    return out


def evaluate_novelty(
    library: np.ndarray,
    known_queries: np.ndarray,
    novel_queries: np.ndarray,
    *,
    threshold: float | None = None,
    metric: Metric = "cosine",
) -> tuple[NoveltyMetrics, np.ndarray, np.ndarray]:
    """Score both query sets against the library; metrics and the two score arrays."""
    known = feature_novelty_scores(known_queries, library, metric)
    novel = feature_novelty_scores(novel_queries, library, metric)
    return novelty_metrics(known, novel, threshold), known, novel
