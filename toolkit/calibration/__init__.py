"""Calibration of novelty thresholds over embeddings (numpy, scikit-learn, scipy only).

Public surface::

    # populations and curves (positives score higher; score >= threshold is positive)
    sample_pairs(labels, max_pairs, seed) -> PairSample;  pair_similarities(emb, pairs)
    roc_curve / pr_curve / auroc / confusion_at (positives, negatives, ...)
    recommend_threshold(positives, negatives, precision_target=None, min_population=30) -> Recommendation
    cluster_thresholds(library, global_threshold, k=None, quantile=0.05, ...) -> ClusterModel
    conformal_p_values(scores, calibration_scores); benjamini_hochberg(p, fdr)
    ConformalGate(calibration_scores, fdr, window).update(novelty_score) -> GateDecision
    # the file the novelty service reads, and how it applies it (defined in shared.index,
    # beside the library, so the service never imports this toolkit; re-exported here)
    ThresholdsFile, save_thresholds(path, tf), load_thresholds(path)
    ThresholdPolicy(tf).threshold_for(vector) -> (threshold, cluster_id | None)
    # the recipe behind ``lithowatch calibrate``
    calibrate_from_embeddings(embeddings, labels, model_version=...) -> (ThresholdsFile, summary)

The novelty score is ``1 - max cosine similarity to the library (top-1)``;
a result is novel when ``novelty_score >= threshold``.
"""

from __future__ import annotations

from shared.index.policy import ThresholdPolicy
from shared.index.thresholds import (
    DECISION_RULE,
    NOVELTY_SCORE_DEFINITION,
    CandidateThreshold,
    ClusterThreshold,
    ConformalCalibration,
    ThresholdsFile,
    load_thresholds,
    save_thresholds,
)
from toolkit.calibration.clusters import ClusterModel, cluster_thresholds
from toolkit.calibration.conformal import ConformalGate, GateDecision, benjamini_hochberg, conformal_p_values
from toolkit.calibration.pairs import PairSample, pair_similarities, sample_pairs
from toolkit.calibration.recipe import CalibrationRun, calibrate_from_embeddings, run_calibration
from toolkit.calibration.roc import auroc, confusion_at, pr_curve, roc_curve
from toolkit.calibration.similarity import l2_normalise, novelty_scores
from toolkit.calibration.thresholds import Recommendation, recommend_threshold

__all__ = [
    "DECISION_RULE",
    "NOVELTY_SCORE_DEFINITION",
    "CalibrationRun",
    "CandidateThreshold",
    "ClusterModel",
    "ClusterThreshold",
    "ConformalCalibration",
    "ConformalGate",
    "GateDecision",
    "PairSample",
    "Recommendation",
    "ThresholdPolicy",
    "ThresholdsFile",
    "auroc",
    "benjamini_hochberg",
    "calibrate_from_embeddings",
    "cluster_thresholds",
    "conformal_p_values",
    "confusion_at",
    "l2_normalise",
    "load_thresholds",
    "novelty_scores",
    "pair_similarities",
    "pr_curve",
    "recommend_threshold",
    "roc_curve",
    "run_calibration",
    "sample_pairs",
    "save_thresholds",
]
