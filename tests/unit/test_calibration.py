"""Known-answer tests of threshold calibration, per-cluster thresholds, conformal gating and the file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import false_discovery_control
from sklearn import metrics
from sklearn.metrics import average_precision_score, roc_auc_score

from shared.dataset import DatasetWriter
from shared.errors import ConfigError, ContractError
from toolkit.calibration import (
    ConformalGate,
    ThresholdPolicy,
    ThresholdsFile,
    auroc,
    benjamini_hochberg,
    calibrate_from_embeddings,
    cluster_thresholds,
    conformal_p_values,
    load_thresholds,
    pair_similarities,
    pr_curve,
    recommend_threshold,
    roc_curve,
    run_calibration,
    sample_pairs,
    save_thresholds,
)
from toolkit.calibration.cli import register
from toolkit.calibration.gap import gap_over_seeds, plot_gaps
from toolkit.calibration.near_identity import near_identity_gate
from toolkit.calibration.recipe import split_size_warnings
from toolkit.calibration.roc import confusion_at, sweep
from toolkit.calibration.thresholds import f1_smooth_threshold, valley_threshold


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def grouped_embeddings(
    n_groups: int = 40, per_group: int = 5, dim: int = 24, jitter: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, list[dict[str, str | float | None]]]:
    """Random group centres, members jittered around them; two families by group parity."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for g in range(n_groups):
        centre = unit(rng.normal(size=dim))
        for v in range(per_group):
            rows.append(centre + jitter * rng.normal(size=dim) / np.sqrt(dim))
            labels.append({"group": f"g{g}", "family": "odd" if g % 2 else "even", "variant": float(v)})
    return unit(np.array(rows)), labels


# -- curves and thresholds ------------------------------------------------------------------------


def test_perfect_separator_gives_auroc_one_and_threshold_strictly_between() -> None:
    rng = np.random.default_rng(1)
    negatives = rng.uniform(0.0, 0.3, 200)
    positives = rng.uniform(0.6, 1.0, 150)
    rec = recommend_threshold(positives, negatives)
    assert rec.auroc == 1.0
    assert rec.method == "f1_smooth"
    assert negatives.max() < rec.threshold < positives.min()
    for candidate in rec.candidates:
        if candidate.threshold is not None:
            assert negatives.max() < candidate.threshold < positives.min(), candidate


def test_small_populations_fall_back_and_still_separate() -> None:
    negatives = np.array([0.10, 0.12, 0.15, 0.11, 0.13])
    positives = np.array([0.50, 0.55, 0.62])
    rec = recommend_threshold(positives, negatives)
    assert rec.method == "youden_j"
    assert "tiny" in rec.reason
    assert negatives.max() < rec.threshold < positives.min()


def test_auroc_and_average_precision_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    positives = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounding makes ties
    negatives = np.round(rng.normal(0.0, 1.0, 500), 1)
    y = np.r_[np.ones(positives.size), np.zeros(negatives.size)]
    s = np.r_[positives, negatives]
    assert auroc(positives, negatives) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert roc_curve(positives, negatives).auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert pr_curve(positives, negatives).average_precision == pytest.approx(
        average_precision_score(y, s), abs=1e-9
    )


def test_curves_are_sklearns_points_with_thresholds_at_cut_points() -> None:
    rng = np.random.default_rng(4)
    positives = np.round(rng.normal(1.0, 1.0, 120), 1)  # ties within and across the populations
    negatives = np.round(rng.normal(0.0, 1.0, 90), 1)
    y = np.r_[np.ones(positives.size), np.zeros(negatives.size)]
    s = np.r_[positives, negatives]
    fpr, tpr, at_score = metrics.roc_curve(y, s, drop_intermediate=False)
    roc = roc_curve(positives, negatives)
    np.testing.assert_array_equal(roc.fpr, fpr)
    np.testing.assert_array_equal(roc.tpr, tpr)
    precision, recall, pr_at_score = metrics.precision_recall_curve(y, s)
    pr = pr_curve(positives, negatives)
    np.testing.assert_array_equal(pr.precision, precision[::-1])
    np.testing.assert_array_equal(pr.recall, recall[::-1])
    # sklearn's thresholds are observed scores (and inf); ours are the midpoints just below them,
    # which call the same scores positive and never sit on an observed score
    distinct = np.unique(s)
    assert roc.thresholds[0] > distinct[-1] and roc.thresholds[-1] < distinct[0]
    np.testing.assert_allclose(roc.thresholds[1:-1], (distinct[:-1] + distinct[1:])[::-1] / 2)
    np.testing.assert_array_equal(pr.thresholds, roc.thresholds)
    assert not np.isin(roc.thresholds, s).any()
    for ours, theirs in zip(roc.thresholds[1:], at_score[1:], strict=True):
        np.testing.assert_array_equal(s >= ours, s >= theirs)
    np.testing.assert_array_equal(pr_at_score[::-1], at_score[1:])


def test_sweep_counts_each_population_at_or_above_each_cut_point() -> None:
    positives, negatives = [0.9, 0.8, 0.4, 0.4], [0.1, 0.4, 0.5]
    sw = sweep(positives, negatives)
    np.testing.assert_allclose(sw.thresholds[1:-1], [0.25, 0.45, 0.65, 0.85])
    np.testing.assert_array_equal(sw.tp, [4, 4, 2, 2, 1, 0])
    np.testing.assert_array_equal(sw.fp, [3, 2, 1, 0, 0, 0])
    for t, tp, fp in zip(sw.thresholds, sw.tp, sw.fp, strict=True):
        assert (
            confusion_at(positives, negatives, t)["tp"] == tp
            and confusion_at(positives, negatives, t)["fp"] == fp
        )


def test_roc_curve_runs_from_origin_to_one() -> None:
    curve = roc_curve([0.9, 0.8, 0.4], [0.1, 0.5])
    assert (curve.fpr[0], curve.tpr[0]) == (0.0, 0.0)
    assert (curve.fpr[-1], curve.tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(curve.fpr) >= 0) and np.all(np.diff(curve.tpr) >= 0)


def test_precision_target_reports_recall_it_costs() -> None:
    rng = np.random.default_rng(3)
    positives = rng.normal(2.0, 1.0, 400)
    negatives = rng.normal(0.0, 1.0, 400)
    rec = recommend_threshold(positives, negatives, precision_target=0.95)
    assert rec.method == "precision_target"
    chosen = rec.candidate("precision_target")
    assert chosen is not None and chosen.precision is not None and chosen.recall is not None
    assert chosen.precision >= 0.95
    assert (positives >= rec.threshold).mean() == pytest.approx(chosen.recall)
    f1_max = rec.candidate("f1_max")
    assert f1_max is not None and f1_max.recall is not None and f1_max.recall > chosen.recall
    unreachable = recommend_threshold(positives, np.r_[negatives, 99.0], precision_target=0.999)
    assert unreachable.method == "f1_smooth" and "unreachable" in unreachable.reason
    missing = unreachable.candidate("precision_target")
    assert missing is not None and missing.threshold is None


def test_f1_max_on_overlapping_gaussians_generalises_to_held_out_split() -> None:
    rng = np.random.default_rng(4)
    positives = rng.normal(1.5, 1.0, 4000)
    negatives = rng.normal(0.0, 1.0, 6000)
    rec = recommend_threshold(positives[:2000], negatives[:3000])
    assert rec.method == "f1_smooth"
    test_pos, test_neg = positives[2000:], negatives[3000:]
    tp = (test_pos >= rec.threshold).sum()
    fp = (test_neg >= rec.threshold).sum()
    f1_test = 2 * tp / (tp + fp + test_pos.size)
    best_test = sweep(test_pos, test_neg).f1.max()
    assert best_test - f1_test <= 0.02


def test_smoothed_f1_stays_in_a_narrow_gap_and_within_one_standard_error() -> None:
    rng = np.random.default_rng(11)
    negatives = rng.uniform(0.0, 0.30, 300)
    positives = rng.uniform(0.305, 1.0, 40)  # gap far narrower than either kernel
    chosen = recommend_threshold(positives, negatives).candidate("f1_smooth")
    assert chosen is not None and chosen.threshold is not None
    assert negatives.max() < chosen.threshold < positives.min()
    overlapping_pos, overlapping_neg = rng.normal(1.0, 1.0, 80), rng.normal(0.0, 1.0, 400)
    sw = sweep(overlapping_pos, overlapping_neg)
    best = sw.f1.max()
    smooth = f1_smooth_threshold(overlapping_pos, overlapping_neg, sw)
    assert smooth.f1 is not None and smooth.f1 >= best - np.sqrt(best * (1 - best) / 80) - 1e-12


def test_smoothed_f1_loses_less_than_raw_f1_max_on_fresh_samples() -> None:
    gaps: dict[str, list[float]] = {"f1_smooth": [], "f1_max": []}
    for seed in range(30):
        rng = np.random.default_rng(seed)
        positives, negatives = rng.normal(1.5, 1.0, 60), rng.normal(0.0, 1.0, 200)
        test_pos, test_neg = rng.normal(1.5, 1.0, 6000), rng.normal(0.0, 1.0, 20000)
        best = sweep(test_pos, test_neg).f1.max()
        rec = recommend_threshold(positives, negatives)
        for method in gaps:
            candidate = rec.candidate(method)
            assert candidate is not None and candidate.threshold is not None
            gaps[method].append(best - confusion_at(test_pos, test_neg, candidate.threshold)["f1"])
    assert np.mean(gaps["f1_smooth"]) < np.mean(gaps["f1_max"])


def test_gap_over_seeds_reports_every_method_and_writes_its_plot(tmp_path: Path) -> None:
    emb, labels = grouped_embeddings(n_groups=60, per_group=4, jitter=0.6)
    result = gap_over_seeds(emb, labels, [0, 1, 2], novel_group_fraction=0.3)
    assert result["seeds"] == [0, 1, 2] and len(result["rows"]) == 3
    assert {"recommended", "f1_smooth", "f1_max", "youden_j"} <= set(result["summary"])
    for row in result["rows"]:
        assert row["gap"] == pytest.approx(row["best_f1_test"] - row["f1_test"])
        assert row["gap"] >= -1e-12 and row[f"gap_{row['method']}"] == pytest.approx(row["gap"])
    summary = result["summary"]["recommended"]
    assert summary["seeds"] == 3 and summary["worst_gap"] >= summary["mean_gap"]
    assert summary["within_bar"] == sum(row["gap"] <= result["bar"] for row in result["rows"])
    assert plot_gaps(result, tmp_path / "gaps.png", "gaps").stat().st_size > 1000
    with pytest.raises(ConfigError):
        gap_over_seeds(emb, labels, [])


def test_small_splits_are_warned_about_and_large_ones_not() -> None:
    emb, labels = grouped_embeddings(n_groups=40, per_group=5)
    _, summary = calibrate_from_embeddings(emb, labels, model_version="m", per_cluster="off")
    warnings = summary["warnings"]
    assert len(warnings) == 4 and all("python -m toolkit.calibration.gap" in w for w in warnings)
    assert split_size_warnings({"novel_test": 400, "known_test": 1000}) == []
    assert len(split_size_warnings({"novel_test": 399, "known_test": 1000})) == 1


def test_valley_sits_between_the_modes() -> None:
    rng = np.random.default_rng(5)
    negatives = rng.normal(0.0, 1.0, 3000)
    positives = rng.normal(5.0, 1.0, 3000)
    candidate = valley_threshold(positives, negatives)
    assert candidate.threshold is not None
    assert candidate.threshold == pytest.approx(2.5, abs=0.35)
    unimodal = valley_threshold(rng.normal(0.2, 1.0, 500), rng.normal(0.0, 1.0, 500))
    assert unimodal.threshold is None


def test_bad_scores_raise() -> None:
    with pytest.raises(ContractError):
        recommend_threshold([], [0.1])
    with pytest.raises(ContractError):
        recommend_threshold([np.nan], [0.1])


# -- pairs ------------------------------------------------------------------------------------------


def test_pair_sampling_is_seeded_balanced_and_capped() -> None:
    labels = [f"g{i // 4}" for i in range(40)] + [None]
    a = sample_pairs(labels, max_pairs=25, seed=7)
    b = sample_pairs(labels, max_pairs=25, seed=7)
    np.testing.assert_array_equal(a.same, b.same)
    np.testing.assert_array_equal(a.different, b.different)
    assert a.same.shape == a.different.shape == (25, 2)
    assert all(labels[i] == labels[j] for i, j in a.same)
    assert all(labels[i] != labels[j] for i, j in a.different)
    assert 40 not in a.same and 40 not in a.different
    assert len({tuple(p) for p in a.same}) == 25
    small = sample_pairs(labels, max_pairs=10_000, seed=0)
    assert small.same.shape[0] == 10 * 6  # every same pair, and as many different ones
    assert small.different.shape[0] == small.same.shape[0]
    with pytest.raises(ConfigError):
        sample_pairs(["a", "b", "c"])


def test_pair_similarities_separate_groups() -> None:
    emb, labels = grouped_embeddings()
    pairs = sample_pairs([row["group"] for row in labels], max_pairs=500, seed=0)
    same = pair_similarities(emb, pairs.same)
    different = pair_similarities(emb, pairs.different)
    assert auroc(same, different) == 1.0


# -- per-cluster thresholds ---------------------------------------------------------------------------


def two_clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dim = 16
    a, b = np.zeros(dim), np.zeros(dim)
    a[0], b[1] = 1.0, 1.0
    tight = unit(a + 0.02 * rng.normal(size=(120, dim)))
    loose = unit(b + 0.25 * rng.normal(size=(120, dim)))
    return tight, loose


def test_clusters_of_different_spread_get_different_thresholds() -> None:
    tight, loose = two_clusters()
    library = np.concatenate([tight, loose])
    model = cluster_thresholds(library, global_threshold=0.1, k=2, quantile=0.05)
    by_member = {int(model.assignments[0]): "tight", int(model.assignments[-1]): "loose"}
    assert len(by_member) == 2
    thresholds = {by_member[c.cluster_id]: c.threshold for c in model.clusters}
    assert thresholds["tight"] < thresholds["loose"]
    assert thresholds["loose"] - thresholds["tight"] > 0.01
    assert not any(c.fallback for c in model.clusters)


def test_k_is_chosen_by_silhouette_and_tiny_clusters_fall_back() -> None:
    tight, loose = two_clusters(1)
    model = cluster_thresholds(np.concatenate([tight, loose]), global_threshold=0.1)
    assert model.centroids.shape[0] >= 2
    assert "silhouette" in model.k_rule
    tiny = cluster_thresholds(np.concatenate([tight, loose[:3]]), 0.123, k=2, min_cluster_size=8)
    fallbacks = [c for c in tiny.clusters if c.fallback]
    assert len(fallbacks) == 1 and fallbacks[0].threshold == 0.123 and fallbacks[0].size == 3


def test_floor_and_ceiling_clip_cluster_thresholds() -> None:
    tight, loose = two_clusters(2)
    model = cluster_thresholds(np.concatenate([tight, loose]), 0.1, k=2, floor=0.05, ceiling=0.06)
    assert all(0.05 <= c.threshold <= 0.06 for c in model.clusters)


# -- conformal --------------------------------------------------------------------------------------


def test_conformal_p_values_known_answers() -> None:
    cal = [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose(conformal_p_values([0.0, 2.0, 2.5, 5.0], cal), [1.0, 4 / 5, 3 / 5, 1 / 5])


def test_benjamini_hochberg_known_rejections() -> None:
    # step-up: the smallest p-value fails its own bound but is rejected with the next two
    p = np.array([0.032, 0.9, 0.03, 0.031])
    np.testing.assert_array_equal(benjamini_hochberg(p, 0.1), [True, False, True, True])
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    assert np.flatnonzero(benjamini_hochberg(p, 0.05)).tolist() == [0, 1]
    assert not benjamini_hochberg([0.5, 0.6], 0.05).any()
    rng = np.random.default_rng(0)
    random_p = np.r_[rng.uniform(0, 0.01, 20), rng.uniform(0, 1, 200)]
    expected = false_discovery_control(random_p, method="bh") <= 0.1
    np.testing.assert_array_equal(benjamini_hochberg(random_p, 0.1), expected)


def test_benjamini_hochberg_is_scipys_and_checks_its_p_values() -> None:
    rng = np.random.default_rng(1)
    for m in (1, 2, 7, 50, 400):
        p = np.round(rng.uniform(0, 1, m) ** 3, 3)  # ties, and zeros (rejected like any p <= a/m)
        for fdr in (0.05, 0.1, 0.3):
            np.testing.assert_array_equal(
                benjamini_hochberg(p, fdr), false_discovery_control(p, method="bh") <= fdr
            )
    assert benjamini_hochberg([0.0, 0.9], 0.1).tolist() == [True, False]
    assert benjamini_hochberg([], 0.1).size == 0
    for bad in ([0.1, 1.5], [np.nan, 0.1], [-0.1]):
        with pytest.raises(ContractError):
            benjamini_hochberg(bad, 0.1)
    with pytest.raises(ConfigError):
        benjamini_hochberg([0.1], 1.0)


def test_conformal_gate_flags_outlier_and_controls_null() -> None:
    rng = np.random.default_rng(8)
    cal = rng.normal(0.1, 0.02, 4000)
    gate = ConformalGate(cal, fdr=0.1, window=200)
    assert gate.can_flag_lone_novelty
    null = gate.update_many(rng.normal(0.1, 0.02, 600))
    assert sum(d.novel for d in null) <= 3
    decision = gate.update(0.5)
    assert decision.novel and decision.p_value == pytest.approx(1 / 4001)
    assert decision.window_size == 200
    from_file = ConformalGate.from_thresholds(sample_file(), fdr=0.2, window=5)
    assert from_file.n_calibration == 3 and from_file.p_value(0.025) == pytest.approx(2 / 4)
    with pytest.raises(ConfigError, match="conformal"):
        ConformalGate.from_thresholds(sample_file().model_copy(update={"conformal": None}))
    weak = ConformalGate(cal[:50], fdr=0.1, window=1000)
    assert not weak.can_flag_lone_novelty
    with pytest.raises(ConfigError):
        ConformalGate(cal, fdr=0.0)


# -- thresholds file and policy ------------------------------------------------------------------------


def sample_file(with_clusters: bool = True) -> ThresholdsFile:
    clusters = None
    if with_clusters:
        clusters = [
            {"cluster_id": 0, "centroid": [1.0, 0.0, 0.0], "threshold": 0.05, "size": 10},
            {"cluster_id": 1, "centroid": [0.0, 1.0, 0.0], "threshold": 0.2, "size": 12},
        ]
    return ThresholdsFile.model_validate(
        {
            "model_version": "resnet18-abc",
            "embedding_dim": 3,
            "global_threshold": 0.1,
            "method": "f1_max",
            "method_reason": "test",
            "candidates": [{"method": "f1_max", "threshold": 0.1, "f1": 0.9}],
            "clusters": clusters,
            "conformal": {"scores": [0.01, 0.02, 0.03], "n_total": 3},
        }
    )


def test_thresholds_file_round_trips(tmp_path: Path) -> None:
    original = sample_file()
    path = save_thresholds(tmp_path / "sub" / "thresholds.json", original)
    loaded = load_thresholds(path)
    assert loaded == original
    assert loaded.novelty_score == "1 - max cosine similarity to library (top-1)"
    assert [p.name for p in path.parent.iterdir()] == ["thresholds.json"]  # no temporary file left


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        json.dumps({"model_version": "m", "global_threshold": -1.0, "method": "f1_max"}),
        json.dumps({"model_version": "m", "global_threshold": 0.1}),
        json.dumps({"schema_version": 99, "model_version": "m", "global_threshold": 0.1, "method": "x"}),
        json.dumps(
            {
                "model_version": "m",
                "global_threshold": 0.1,
                "method": "x",
                "embedding_dim": 2,
                "clusters": [{"cluster_id": 0, "centroid": [1.0, 0.0, 0.0], "threshold": 0.1}],
            }
        ),
    ],
)
def test_corrupt_thresholds_file_raises_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "thresholds.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="thresholds"):
        load_thresholds(path)


def test_missing_thresholds_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_thresholds(tmp_path / "absent.json")


def test_policy_picks_nearest_centroid_or_global() -> None:
    policy = ThresholdPolicy(sample_file())
    assert policy.threshold_for(np.array([0.9, 0.1, 0.0])) == (0.05, 0)
    assert policy.threshold_for(np.array([0.1, 3.0, 0.2])) == (0.2, 1)
    thresholds, clusters = policy.thresholds_for(np.array([[1.0, 0, 0], [0, 1.0, 0]]))
    assert thresholds.tolist() == [0.05, 0.2] and clusters.tolist() == [0, 1]
    assert policy.is_novel(0.06, np.array([1.0, 0.0, 0.0]))[0]
    with pytest.raises(ContractError):
        policy.threshold_for(np.ones(4))
    flat = ThresholdPolicy(sample_file(with_clusters=False))
    assert flat.threshold_for(np.array([0.0, 0.0, 1.0])) == (0.1, None)


# -- the calibration recipe and command --------------------------------------------------------------


def test_calibrate_from_embeddings_separates_held_out_groups(tmp_path: Path) -> None:
    emb, labels = grouped_embeddings()
    tf, summary = calibrate_from_embeddings(emb, labels, model_version="m1", per_cluster="off")
    assert tf.model_version == "m1" and tf.embedding_dim == emb.shape[1]
    assert summary["test_split"]["auroc"] == 1.0
    assert summary["test_split"]["f1"] == 1.0
    assert summary["split"]["n_novel_cal"] > 0 and summary["split"]["n_known_test"] > 0
    assert tf.clusters is None and tf.conformal is not None
    assert load_thresholds(save_thresholds(tmp_path / "t.json", tf)) == tf


def test_calibration_by_holdout_label_and_per_cluster_on() -> None:
    emb, labels = grouped_embeddings(seed=3)
    run = run_calibration(
        emb,
        labels,
        model_version="m",
        holdout_label="family",
        holdout_values=["odd"],
        per_cluster="on",
        n_clusters=3,
    )
    assert run.summary["split"]["novel_rule"] == "family in ['odd']"
    assert run.thresholds.clusters is not None and len(run.thresholds.clusters) == 3
    novel_idx = np.r_[run.split.novel_cal, run.split.novel_test]
    assert all(labels[i]["family"] == "odd" for i in novel_idx)
    assert not set(novel_idx) & set(run.split.library.tolist())
    with pytest.raises(ConfigError, match="values seen"):
        run_calibration(emb, labels, model_version="m", holdout_label="family", holdout_values=["none"])


def tiny_dataset(root: Path, n_groups: int = 12, per_group: int = 4) -> None:
    rng = np.random.default_rng(0)
    with DatasetWriter(root) as writer:
        for g in range(n_groups):
            base = (rng.random((16, 16)) > 0.5).astype(np.float32)
            for v in range(per_group):
                shifted = np.roll(base, v, axis=1)
                writer.add(f"g{g}v{v}", shifted, shifted, 4.0, {"group": f"g{g}", "family": f"f{g % 3}"})


def test_calibrate_command_with_saved_embeddings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_dataset(tmp_path / "data")
    emb, _ = grouped_embeddings(n_groups=12, per_group=4, seed=5)
    np.save(tmp_path / "emb.npy", emb)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "calibrate",
            "--dataset",
            str(tmp_path / "data"),
            "--embeddings",
            str(tmp_path / "emb.npy"),
            "--model-version",
            "mv",
            "--out",
            str(tmp_path / "t.json"),
            "--report",
            str(tmp_path / "report"),
            "--json",
            str(tmp_path / "summary.json"),
            "--per-cluster",
            "off",
        ]
    )
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "summary.json").read_text())
    assert load_thresholds(tmp_path / "t.json").global_threshold == pytest.approx(printed["threshold"])
    index = (tmp_path / "report" / "index.html").read_text()
    for name in ("novelty_hist_cal.png", "roc_test.png", "pr_test.png"):
        assert f"src='{name}'" in index and (tmp_path / "report" / name).stat().st_size > 1000
    bad = parser.parse_args(
        [
            "calibrate",
            "--dataset",
            str(tmp_path / "data"),
            "--embeddings",
            str(tmp_path / "t.json"),
            "--out",
            str(tmp_path / "x.json"),
        ]
    )
    with pytest.raises(ConfigError):
        bad.func(bad)


# -- the near-identity gate of hybrid duplicate confirmation ----------------------------------------


def test_near_identity_gate_is_the_low_quantile_of_same_layout_pairs() -> None:
    # four layouts, two results each, at known cosine similarities 0.6, 0.7, 0.8, 0.9; a defective
    # result of the first layout sits far from it (a defect is not a re-simulation: left out)
    rows, labels = [], []
    for g, similarity in enumerate((0.6, 0.7, 0.8, 0.9)):
        a, b = np.zeros(8), np.zeros(8)
        a[g] = 1.0
        b[g], b[g + 4] = similarity, np.sqrt(1.0 - similarity**2)
        rows += [a, b]
        labels += [{"group": f"g{g}", "defect": "none"}, {"group": f"g{g}", "defect": "none"}]
    rows.append(np.eye(8)[7])
    labels.append({"group": "g0", "defect": "bridge"})
    emb = np.array(rows, dtype=np.float32)
    gate = near_identity_gate(emb, labels, quantile=0.0)
    assert gate.similarity == pytest.approx(0.6, abs=1e-6) and gate.n_pairs == 4
    assert gate.pair_median == pytest.approx(0.75, abs=1e-6)
    assert near_identity_gate(emb, labels, quantile=0.34).similarity == pytest.approx(0.702, abs=1e-3)
    with pytest.raises(ConfigError, match="quantile"):
        near_identity_gate(emb, labels, quantile=0.7)
    with pytest.raises(ConfigError):
        near_identity_gate(emb, [{"group": f"g{i}"} for i in range(len(labels))])  # no same-layout pair


def test_calibration_writes_the_near_identity_gate(tmp_path: Path) -> None:
    emb, labels = grouped_embeddings(jitter=0.3)
    tf, summary = calibrate_from_embeddings(
        emb, labels, model_version="m1", per_cluster="off", near_identity_quantile=0.05
    )
    same = [
        float(emb[i] @ emb[j])
        for i in range(len(labels))
        for j in range(i + 1, len(labels))
        if labels[i]["group"] == labels[j]["group"]
    ]
    assert tf.near_identity is not None and tf.near_identity.quantile == 0.05
    assert tf.near_identity.similarity == pytest.approx(float(np.quantile(same, 0.05)), abs=1e-5)
    assert summary["near_identity"]["similarity"] == tf.near_identity.similarity
    loaded = load_thresholds(save_thresholds(tmp_path / "t.json", tf))
    assert loaded.near_identity == tf.near_identity
    older = json.loads((tmp_path / "t.json").read_text())
    del older["near_identity"]  # a file written before the gate existed still loads
    (tmp_path / "old.json").write_text(json.dumps(older))
    assert load_thresholds(tmp_path / "old.json").near_identity is None
