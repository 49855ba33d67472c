"""Novelty detection quality: known queries vs held-out novel queries against a library.

A feature set scores novelty either as ``1 - max similarity`` to the library under
a retrieval metric (the encoder, pixel thumbnails, pHash) or, with the scoring
``"precomputed"``, by one score per item computed beforehand (an autoencoder's
reconstruction error: higher = more novel, no library needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from shared.errors import ConfigError, ContractError
from shared.index.policy import ThresholdPolicy
from shared.index.thresholds import ThresholdsFile
from toolkit.calibration.pairs import LabelValue
from toolkit.calibration.roc import auroc, check_scores, confusion_at, pr_curve, sweep
from toolkit.calibration.similarity import novelty_scores
from toolkit.calibration.split import CalibrationSplit, split_for_calibration
from toolkit.evaluation.retrieval import Metric, comparable_matrix, similarity_from_dot

NoveltyScoring = Literal["cosine", "hamming", "precomputed"]
#: name -> (features (N, D), or scores (N,) when precomputed; how they score novelty)
NoveltyFeatureSets = Mapping[str, tuple[np.ndarray, NoveltyScoring]]


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


def check_feature_sets(feature_sets: NoveltyFeatureSets, n_items: int) -> None:
    """One row (or, precomputed, one finite score) per item in every feature set."""
    if not feature_sets:
        raise ConfigError("no feature set to evaluate")
    for name, (features, scoring) in feature_sets.items():
        array = np.asarray(features)
        if scoring == "precomputed":
            if array.shape != (n_items,):
                raise ContractError(f"{name}: precomputed scores of shape {array.shape}, not ({n_items},)")
            if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
                raise ContractError(f"{name}: precomputed scores must be finite numbers")
        elif array.ndim != 2 or array.shape[0] != n_items:
            raise ContractError(f"{name}: features of shape {array.shape}, expected ({n_items}, D)")


def item_novelty_scores(
    features: np.ndarray, scoring: NoveltyScoring, queries: np.ndarray, library: np.ndarray
) -> np.ndarray:
    """Novelty scores of the items ``queries`` (indices) against the items ``library``."""
    array = np.asarray(features)
    if scoring == "precomputed":
        return array[queries].astype(np.float64)
    return feature_novelty_scores(array[queries], array[library], scoring)


@dataclass(frozen=True)
class SplitScores:
    """One feature set on one split: the two score arrays and the metrics entry of the summary."""

    known: np.ndarray
    novel: np.ndarray
    entry: dict[str, Any]


def score_split(
    feature_sets: NoveltyFeatureSets, split: CalibrationSplit, thresholds: ThresholdsFile | None = None
) -> dict[str, SplitScores]:
    """Every feature set's known and novel query scores on ``split``, with their metrics.

    The thresholds file (global or per cluster) applies to the first feature set,
    the encoder; the others get their own F1-max threshold, which flatters them.
    """
    known_idx = np.concatenate([split.known_cal, split.known_test])
    novel_idx = np.concatenate([split.novel_cal, split.novel_test])
    out: dict[str, SplitScores] = {}
    for position, (name, (features, scoring)) in enumerate(feature_sets.items()):
        known = item_novelty_scores(features, scoring, known_idx, split.library)
        novel = item_novelty_scores(features, scoring, novel_idx, split.library)
        entry: dict[str, Any]
        if position == 0 and thresholds is not None:
            if scoring == "precomputed":
                raise ConfigError(f"a thresholds file applies to embeddings, not to the scores of {name!r}")
            matrix = np.asarray(features)
            policy = ThresholdPolicy(thresholds)
            thr_known, _ = policy.thresholds_for(matrix[known_idx])
            thr_novel, _ = policy.thresholds_for(matrix[novel_idx])
            base = novelty_metrics(known, novel, thresholds.global_threshold).as_dict()
            tp = int((novel >= thr_novel).sum())
            fp = int((known >= thr_known).sum())
            entry = {
                **base,
                "policy": "per-cluster" if policy.has_clusters else "global",
                "precision": tp / (tp + fp) if tp + fp else 1.0,
                "recall": tp / novel.size,
                "f1": 2 * tp / (tp + fp + novel.size),
                "fpr": fp / known.size,
            }
        else:
            entry = {**novelty_metrics(known, novel).as_dict(), "policy": "f1_max on these scores"}
        out[name] = SplitScores(known, novel, entry)
    return out


def held_out_family_scores(
    feature_sets: NoveltyFeatureSets,
    labels: Sequence[Mapping[str, LabelValue]],
    *,
    family_label: str = "family",
    group_label: str = "group",
    seed: int = 0,
) -> dict[str, Any]:
    """Every family held out in turn (novel) against a library of the others.

    Returns ``families`` (per held-out family: its split and each feature set's
    AUROC and average precision, or why it was skipped) and ``results`` (per
    feature set: the mean over the families evaluated, and the worst AUROC).
    A family is skipped when its split is impossible (e.g. no known queries left).
    """
    check_feature_sets(feature_sets, len(labels))
    families = sorted({str(row[family_label]) for row in labels if row.get(family_label) is not None})
    if len(families) < 2:
        raise ConfigError(f"holding out each {family_label!r} in turn needs 2 values or more, got {families}")
    per_family: dict[str, dict[str, Any]] = {}
    for family in families:
        try:
            split = split_for_calibration(
                labels,
                group_label=group_label,
                holdout_label=family_label,
                holdout_values=[family],
                seed=seed,
            )
        except ConfigError as exc:
            per_family[family] = {"skipped": str(exc)}
            continue
        scored = score_split(feature_sets, split)
        per_family[family] = {
            "split": split.describe(),
            "results": {
                name: {k: s.entry[k] for k in ("auroc", "average_precision", "n_known", "n_novel")}
                for name, s in scored.items()
            },
        }
    done = [entry["results"] for entry in per_family.values() if "results" in entry]
    if not done:
        reasons = "; ".join(f"{f}: {e['skipped']}" for f, e in list(per_family.items())[:4])
        raise ConfigError(f"no {family_label!r} could be held out: {reasons}")
    results = {
        name: {
            "auroc": float(np.mean([r[name]["auroc"] for r in done])),
            "average_precision": float(np.mean([r[name]["average_precision"] for r in done])),
            "auroc_min": float(np.min([r[name]["auroc"] for r in done])),
            "n_families": len(done),
        }
        for name in feature_sets
    }
    return {"family_label": family_label, "families": per_family, "results": results}
