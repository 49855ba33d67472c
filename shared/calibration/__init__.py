"""Calibration of novelty thresholds over embeddings (numpy, scikit-learn, scipy only).

Public surface::

    # populations and curves (positives score higher; score >= threshold is positive)
    sample_pairs(labels, max_pairs, seed) -> PairSample;  pair_similarities(emb, pairs)
    roc_curve / pr_curve / auroc / confusion_at (positives, negatives, ...)
    recommend_threshold(positives, negatives, precision_target=None, min_population=30) -> Recommendation
    cluster_thresholds(library, global_threshold, k=None, quantile=0.05, ...) -> ClusterModel
    conformal_p_values(scores, calibration_scores); benjamini_hochberg(p, fdr)
    ConformalGate(calibration_scores, fdr, window).update(novelty_score) -> GateDecision
    # the file the novelty service reads
    ThresholdsFile, save_thresholds(path, tf), load_thresholds(path)
    ThresholdPolicy(tf).threshold_for(vector) -> (threshold, cluster_id | None)
    # the recipe behind ``lithowatch calibrate``
    calibrate_from_embeddings(embeddings, labels, model_version=...) -> (ThresholdsFile, summary)

The novelty score is ``1 - max cosine similarity to the library (top-1)``;
a result is novel when ``novelty_score >= threshold``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use, so that a service needing only the thresholds
# policy does not pay for scikit-learn and matplotlib at start-up.
_EXPORTS: dict[str, str] = {
    "CalibrationRun": "shared.calibration.recipe",
    "ClusterModel": "shared.calibration.clusters",
    "ClusterThreshold": "shared.calibration.thresholds_file",
    "ConformalCalibration": "shared.calibration.thresholds_file",
    "ConformalGate": "shared.calibration.conformal",
    "DECISION_RULE": "shared.calibration.thresholds_file",
    "GateDecision": "shared.calibration.conformal",
    "NOVELTY_SCORE_DEFINITION": "shared.calibration.thresholds_file",
    "PairSample": "shared.calibration.pairs",
    "Recommendation": "shared.calibration.thresholds",
    "CandidateThreshold": "shared.calibration.thresholds_file",
    "ThresholdPolicy": "shared.calibration.policy",
    "ThresholdsFile": "shared.calibration.thresholds_file",
    "auroc": "shared.calibration.roc",
    "benjamini_hochberg": "shared.calibration.conformal",
    "calibrate_from_embeddings": "shared.calibration.recipe",
    "cluster_thresholds": "shared.calibration.clusters",
    "conformal_p_values": "shared.calibration.conformal",
    "confusion_at": "shared.calibration.roc",
    "l2_normalise": "shared.calibration.similarity",
    "load_thresholds": "shared.calibration.thresholds_file",
    "novelty_scores": "shared.calibration.similarity",
    "pair_similarities": "shared.calibration.pairs",
    "pr_curve": "shared.calibration.roc",
    "recommend_threshold": "shared.calibration.thresholds",
    "roc_curve": "shared.calibration.roc",
    "run_calibration": "shared.calibration.recipe",
    "sample_pairs": "shared.calibration.pairs",
    "save_thresholds": "shared.calibration.thresholds_file",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shared.calibration' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
