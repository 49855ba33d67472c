"""Calibration from embeddings: split, score, pick a threshold, check it on held-out data.

The recipe, all over already computed embeddings and labels (no model, no I/O):

1. *novel* results: items whose ``holdout_label`` is one of ``holdout_values``
   (e.g. whole layout families), or, without those, a random fraction of groups;
2. the rest is *known*; of each known group with two or more members a fraction
   is held out as *known queries* (their group keeps members in the library), the
   rest forms the library;
3. every query's ``novelty_score = 1 - max cosine similarity to the library``;
4. queries are split by group into a calibration and a test half; the threshold
   is picked on the calibration half and reported on the test half (its F1 next
   to the best F1 any threshold reaches there);
5. optional per-cluster thresholds (density quantile chosen on the calibration
   half, kept in ``auto`` mode only when they beat the global threshold there);
6. the calibration half's known scores become the conformal calibration set;
7. every known item scored against the other known items (leave one out) becomes the
   reference distribution the novelty service's drift watch compares the stream with
   (:mod:`toolkit.calibration.reference`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from shared.errors import ConfigError, ContractError
from shared.index.thresholds import (
    CONFORMAL_SCORES_MAX,
    ClusterThreshold,
    ConformalCalibration,
    NearIdentityGate,
    ScoreReference,
    ThresholdsFile,
)
from toolkit.calibration.clusters import (
    ClusterModel,
    LibraryClusters,
    assign_clusters,
    fit_library_clusters,
    thresholds_from_density,
)
from toolkit.calibration.feedback import FeedbackLabels
from toolkit.calibration.near_identity import NEAR_IDENTITY_QUANTILE_DEFAULT, near_identity_gate
from toolkit.calibration.pairs import LabelValue, pair_similarities, sample_pairs
from toolkit.calibration.reference import MIN_REFERENCE_SCORES, leave_one_out_scores, score_reference
from toolkit.calibration.roc import auroc, confusion_at, sweep
from toolkit.calibration.similarity import l2_normalise, top1_cosine
from toolkit.calibration.split import CalibrationSplit, split_for_calibration
from toolkit.calibration.thresholds import Recommendation, recommend_threshold

PerClusterMode = Literal["auto", "on", "off"]
QUANTILE_GRID = (0.01, 0.02, 0.05, 0.1, 0.2)
AUTO_CLUSTER_MIN_GAIN_F1 = 0.01
CLUSTER_FLOOR_FACTOR = 0.5
CLUSTER_CEILING_FACTOR = 2.0
PAIRS_MAX = 5000
# Below this many scores in a population of a split, the test split's F1 gap varies by more than
# 0.02 from seed to seed (measured with ``python -m toolkit.calibration.gap`` on generated farm data).
STABLE_SPLIT_SCORES = 400


def split_size_warnings(sizes: Mapping[str, int]) -> list[str]:
    """One line per population of a split too small for a stable threshold and gap."""
    return [
        f"{name} has {n} scores (< {STABLE_SPLIT_SCORES}): the threshold and its F1 gap move from seed "
        f"to seed; use more results, or check with python -m toolkit.calibration.gap"
        for name, n in sizes.items()
        if n < STABLE_SPLIT_SCORES
    ]


@dataclass(frozen=True)
class CalibrationRun:
    """Everything one calibration produced: the file, the summary and the populations behind it."""

    thresholds: ThresholdsFile
    summary: dict[str, Any]
    recommendation: Recommendation
    split: CalibrationSplit
    known_cal: np.ndarray
    novel_cal: np.ndarray
    known_test: np.ndarray
    novel_test: np.ndarray
    same_pair_similarity: np.ndarray | None
    different_pair_similarity: np.ndarray | None


def _f1_of(
    novel: np.ndarray, known: np.ndarray, novel_thr: np.ndarray | float, known_thr: np.ndarray | float
) -> float:
    """F1 of calling ``score >= threshold`` novel, with one threshold per query or one for all."""
    tp = int((novel >= novel_thr).sum())
    fp = int((known >= known_thr).sum())
    fn = novel.size - tp
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def _split_report(novel: np.ndarray, known: np.ndarray, threshold: float) -> dict[str, Any]:
    at = confusion_at(novel, known, threshold)
    sw = sweep(novel, known)
    best = int(np.argmax(sw.f1))
    return {
        "n_known": int(known.size),
        "n_novel": int(novel.size),
        "auroc": auroc(novel, known),
        "threshold": threshold,
        "precision": at["precision"],
        "recall": at["recall"],
        "f1": at["f1"],
        "fpr": at["fpr"],
        "best_f1": float(sw.f1[best]),
        "best_f1_threshold": float(sw.thresholds[best]),
        "f1_gap": float(sw.f1[best]) - at["f1"],
    }


def _per_cluster(
    library: np.ndarray,
    queries: dict[str, np.ndarray],
    scores: dict[str, np.ndarray],
    global_threshold: float,
    mode: PerClusterMode,
    n_clusters: int | None,
    seed: int,
) -> tuple[ClusterModel | None, dict[str, Any]]:
    """Fit clusters, choose the density quantile on the calibration half, decide whether to keep them."""
    fitted: LibraryClusters = fit_library_clusters(library, n_clusters, seed)
    floor = CLUSTER_FLOOR_FACTOR * global_threshold
    ceiling = min(2.0, CLUSTER_CEILING_FACTOR * global_threshold)
    nearest = {name: assign_clusters(vecs, fitted.centroids) for name, vecs in queries.items()}

    def f1_with(model: ClusterModel, half: str) -> float:
        table = np.array([c.threshold for c in model.clusters])
        return _f1_of(
            scores[f"novel_{half}"],
            scores[f"known_{half}"],
            table[nearest[f"novel_{half}"]],
            table[nearest[f"known_{half}"]],
        )

    models = {
        q: thresholds_from_density(fitted, global_threshold, quantile=q, floor=floor, ceiling=ceiling)
        for q in QUANTILE_GRID
    }
    cal_f1 = {q: f1_with(model, "cal") for q, model in models.items()}
    best_q = max(QUANTILE_GRID, key=lambda q: cal_f1[q])  # first of ties: the lowest quantile
    best_model, best_f1 = models[best_q], cal_f1[best_q]
    novel_cal, known_cal = scores["novel_cal"], scores["known_cal"]
    global_cal = _f1_of(novel_cal, known_cal, global_threshold, global_threshold)
    keep = mode == "on" or (mode == "auto" and best_f1 >= global_cal + AUTO_CLUSTER_MIN_GAIN_F1)
    report = {
        "mode": mode,
        "kept": keep,
        "k": int(fitted.centroids.shape[0]),
        "k_rule": fitted.k_rule,
        "quantile": best_q,
        "floor": floor,
        "ceiling": ceiling,
        "f1_cal": best_f1,
        "f1_cal_global": global_cal,
        "f1_test": f1_with(best_model, "test"),
        "thresholds": [round(c.threshold, 6) for c in best_model.clusters],
        "sizes": [c.size for c in best_model.clusters],
        "fallbacks": int(sum(c.fallback for c in best_model.clusters)),
    }
    return (best_model if keep else None), report


def _score_reference(
    emb: np.ndarray, split: CalibrationSplit
) -> tuple[ScoreReference | None, dict[str, Any]]:
    """The drift reference from the known items (library and known queries), with its summary."""
    known = np.concatenate([split.library, split.known_cal, split.known_test])
    if known.size < MIN_REFERENCE_SCORES:
        why = f"{known.size} known results, fewer than {MIN_REFERENCE_SCORES}: no drift reference"
        return None, {"available": False, "why": why}
    reference = score_reference(leave_one_out_scores(emb[np.sort(known)]))
    quantiles = reference.quantiles
    middle = len(quantiles) // 2
    return reference, {
        "available": True,
        "n_scores": reference.n_scores,
        "bins": len(reference.bin_proportions),
        "median": quantiles[middle],
        "p90": quantiles[round(0.9 * (len(quantiles) - 1))],
    }


def run_calibration(
    embeddings: np.ndarray,
    labels: Sequence[Mapping[str, LabelValue]],
    *,
    model_version: str,
    group_label: str = "group",
    holdout_label: str | None = None,
    holdout_values: Sequence[str] | None = None,
    query_fraction: float = 0.3,
    novel_group_fraction: float = 0.15,
    cal_fraction: float = 0.5,
    precision_target: float | None = None,
    per_cluster: PerClusterMode = "auto",
    n_clusters: int | None = None,
    conformal_max: int = CONFORMAL_SCORES_MAX,
    near_identity_quantile: float = NEAR_IDENTITY_QUANTILE_DEFAULT,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    feedback: FeedbackLabels | None = None,
) -> CalibrationRun:
    """Calibrate a novelty threshold from embeddings of a labelled data set.

    ``feedback``: reviewers' decisions (:mod:`toolkit.calibration.feedback`), scored against the
    same library and added to the calibration split's known (promoted) and novel (dropped)
    queries, so the threshold is chosen with them; the test split stays the data set's."""
    say = progress or (lambda _msg: None)
    emb = l2_normalise(embeddings)
    if len(labels) != emb.shape[0]:
        raise ContractError(f"{len(labels)} label rows for {emb.shape[0]} embeddings")
    if per_cluster not in ("auto", "on", "off"):
        raise ConfigError(f"per-cluster mode must be auto, on or off, not {per_cluster!r}")
    split = split_for_calibration(
        labels,
        group_label=group_label,
        holdout_label=holdout_label,
        holdout_values=holdout_values,
        query_fraction=query_fraction,
        novel_group_fraction=novel_group_fraction,
        cal_fraction=cal_fraction,
        seed=seed,
    )
    library = emb[split.library]
    say(f"scoring {split.n_queries} queries against a library of {split.library.size}")
    scores: dict[str, np.ndarray] = {}
    queries: dict[str, np.ndarray] = {}
    for name in ("known_cal", "known_test", "novel_cal", "novel_test"):
        vecs = emb[getattr(split, name)]
        _, best = top1_cosine(vecs, library)
        queries[name] = vecs
        scores[name] = np.clip(1.0 - best.astype(np.float64), 0.0, 2.0)
    feedback_report: dict[str, Any] = {"used": False}
    if feedback is not None:
        feedback_scores = {}
        for name, vectors in (("known_cal", feedback.known), ("novel_cal", feedback.novel)):
            if vectors.shape[0]:
                vecs = l2_normalise(vectors, "feedback vectors")
                _, best = top1_cosine(vecs, library)
                feedback_scores[name] = np.clip(1.0 - best.astype(np.float64), 0.0, 2.0)
                scores[name] = np.concatenate([scores[name], feedback_scores[name]])
                queries[name] = np.concatenate([queries[name], vecs])
        feedback_report = {"used": bool(feedback_scores), **feedback.describe()}
        n_known, n_novel = feedback.known.shape[0], feedback.novel.shape[0]
        say(f"feedback: {n_known} promoted entries as known, {n_novel} dropped ones as novel")

    say("choosing the threshold on the calibration split")
    rec = recommend_threshold(
        scores["novel_cal"],
        scores["known_cal"],
        precision_target=precision_target,
        positive_name="novel",
        negative_name="known",
    )
    cal_report = _split_report(scores["novel_cal"], scores["known_cal"], rec.threshold)
    test_report = _split_report(scores["novel_test"], scores["known_test"], rec.threshold)

    cluster_model: ClusterModel | None = None
    cluster_report: dict[str, Any] = {"mode": per_cluster, "kept": False}
    if per_cluster != "off":
        say("fitting library clusters")
        cluster_model, cluster_report = _per_cluster(
            library, queries, scores, rec.threshold, per_cluster, n_clusters, seed
        )

    say("sampling same/different pairs in the library")
    same_sims: np.ndarray | None = None
    diff_sims: np.ndarray | None = None
    pair_report: dict[str, Any] = {"available": False}
    try:
        library_groups = [labels[i].get(group_label) for i in split.library]
        pairs = sample_pairs(library_groups, max_pairs=PAIRS_MAX, seed=seed)
        same_sims = pair_similarities(library, pairs.same)
        diff_sims = pair_similarities(library, pairs.different)
        pair_report = {
            "available": True,
            "n_pairs_each": int(same_sims.size),
            "auroc": auroc(same_sims, diff_sims),
            "same_mean": float(same_sims.mean()),
            "different_mean": float(diff_sims.mean()),
        }
    except ConfigError as exc:
        pair_report["why"] = str(exc)

    say("reading the near-identity gate off same-layout pairs")
    gate: NearIdentityGate | None = None
    gate_report: dict[str, Any] = {"available": False}
    try:
        gate = near_identity_gate(
            emb, labels, group_label=group_label, quantile=near_identity_quantile, seed=seed
        )
        gate_report = {"available": True, **gate.model_dump()}
    except ConfigError as exc:
        gate_report["why"] = str(exc)

    say("scoring the known results against each other for the drift reference")
    reference, reference_report = _score_reference(emb, split)

    rng = np.random.default_rng(seed)
    cal_known = scores["known_cal"]
    if cal_known.size > conformal_max:
        cal_known = rng.choice(cal_known, conformal_max, replace=False)
    conformal = ConformalCalibration(
        scores=sorted(float(s) for s in cal_known), n_total=int(scores["known_cal"].size)
    )

    clusters = None
    if cluster_model is not None:
        clusters = [
            ClusterThreshold(
                cluster_id=c.cluster_id,
                centroid=[float(v) for v in c.centroid],
                threshold=c.threshold,
                size=c.size,
                fallback=c.fallback,
            )
            for c in cluster_model.clusters
        ]
    calibration_meta: dict[str, float | int | str | None] = {
        "n_items": int(emb.shape[0]),
        "n_library": int(split.library.size),
        "novel_rule": split.novel_rule,
        "auroc_cal": cal_report["auroc"],
        "auroc_test": test_report["auroc"],
        "f1_test": test_report["f1"],
        "best_f1_test": test_report["best_f1"],
        "seed": seed,
    }
    thresholds = ThresholdsFile(
        model_version=model_version,
        embedding_dim=int(emb.shape[1]),
        global_threshold=rec.threshold,
        method=rec.method,
        method_reason=rec.reason,
        candidates=list(rec.candidates),
        clusters=clusters,
        cluster_rule=cluster_model.k_rule if cluster_model is not None else None,
        conformal=conformal,
        calibration=calibration_meta,
        near_identity=gate,
        score_reference=reference,
    )
    summary: dict[str, Any] = {
        "command": "calibrate",
        "model_version": model_version,
        "novelty_score": thresholds.novelty_score,
        "decision": thresholds.decision,
        "threshold": rec.threshold,
        "method": rec.method,
        "reason": rec.reason,
        "candidates": [c.model_dump() for c in rec.candidates],
        "split": split.describe(),
        "calibration_split": cal_report,
        "test_split": test_report,
        "per_cluster": cluster_report,
        "pairs": pair_report,
        "near_identity": gate_report,
        "conformal": {
            "n_scores": len(conformal.scores),
            "n_total": conformal.n_total,
            "min_p_value": 1.0 / (len(conformal.scores) + 1),
        },
        "score_reference": reference_report,
        "feedback": feedback_report,
        "warnings": split_size_warnings({name: int(values.size) for name, values in scores.items()}),
    }
    for warning in summary["warnings"]:
        say(f"warning: {warning}")
    return CalibrationRun(
        thresholds=thresholds,
        summary=summary,
        recommendation=rec,
        split=split,
        known_cal=scores["known_cal"],
        novel_cal=scores["novel_cal"],
        known_test=scores["known_test"],
        novel_test=scores["novel_test"],
        same_pair_similarity=same_sims,
        different_pair_similarity=diff_sims,
    )


def calibrate_from_embeddings(
    embeddings: np.ndarray, labels: Sequence[Mapping[str, LabelValue]], **options: Any
) -> tuple[ThresholdsFile, dict[str, Any]]:
    """:func:`run_calibration` reduced to the thresholds file and the JSON summary."""
    run = run_calibration(embeddings, labels, **options)
    return run.thresholds, run.summary
