"""Known-answer tests of retrieval, novelty, map, transfer metrics and the baseline features."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest

from shared.dataset import DatasetWriter
from shared.errors import ConfigError, ContractError, ImageError
from toolkit.evaluation import (
    embedding_maps,
    evaluate_novelty,
    hamming_similarity,
    novelty_metrics,
    phash_features,
    pixel_features,
    retrieval_metrics,
    silhouette,
    transfer_score,
)
from toolkit.evaluation.cli import register_eval as register
from toolkit.evaluation.commands import eval_clusters, eval_retrieval, eval_transfer
from toolkit.evaluation.novelty_commands import eval_novelty
from toolkit.evaluation.retrieval import Metric


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def identical_groups(
    n_groups: int, per_group: int, dim: int = 32, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(n_groups, dim)))
    rows = np.repeat(centres, per_group, axis=0)
    labels = [f"g{i}" for i in range(n_groups) for _ in range(per_group)]
    order = rng.permutation(len(labels))
    return rows[order], [labels[i] for i in order]


def reference_map_at_r(features: np.ndarray, labels: list[str]) -> float:
    """Straightforward per-query loop, for comparison."""
    x = unit(features)
    sims = x @ x.T
    aps = []
    for q in range(len(labels)):
        others = [j for j in range(len(labels)) if j != q]
        r = sum(labels[j] == labels[q] for j in others)
        if r == 0:
            continue
        ranked = sorted(others, key=lambda j: (-sims[q, j], j))[:r]
        hits, total = 0, 0.0
        for i, j in enumerate(ranked, start=1):
            if labels[j] == labels[q]:
                hits += 1
                total += hits / i
        aps.append(total / r)
    return float(np.mean(aps))


# -- retrieval ---------------------------------------------------------------------------------


def test_identical_embeddings_within_groups_give_perfect_retrieval() -> None:
    features, labels = identical_groups(n_groups=6, per_group=12)
    result = retrieval_metrics(features, labels, label_name="group")
    assert result.precision_at == {1: 1.0, 5: 1.0, 10: 1.0}
    assert result.map_at_r == 1.0 and result.r_precision == 1.0
    assert result.n_queries == 72 and result.n_skipped == 0 and result.mean_r == 11


def test_map_at_r_is_one_for_small_groups_and_singletons_are_skipped() -> None:
    features, labels = identical_groups(n_groups=10, per_group=3)
    rng = np.random.default_rng(1)
    features = np.vstack([features, unit(rng.normal(size=(2, 32)))])
    labels = [*labels, "alone1", "alone2"]
    result = retrieval_metrics(features, labels)
    assert result.map_at_r == 1.0 and result.precision_at[1] == 1.0
    assert result.precision_at[5] == pytest.approx(2 / 5)  # only R = 2 relevant items exist
    assert result.n_skipped == 2


def test_map_at_r_matches_reference_loop() -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(60, 8)).astype(np.float32)
    labels = [f"g{i}" for i in rng.integers(0, 7, 60)]
    result = retrieval_metrics(features, labels, block_size=7)
    assert result.map_at_r == pytest.approx(reference_map_at_r(features, labels), abs=1e-6)


def test_hamming_retrieval_on_phash_of_identical_images() -> None:
    rng = np.random.default_rng(3)
    bases = [(rng.random((32, 32)) > 0.5).astype(np.float32) for _ in range(5)]
    images = [b for b in bases for _ in range(3)]
    labels = [f"g{i}" for i in range(5) for _ in range(3)]
    bits = phash_features(images)
    assert bits.shape == (15, 64) and set(np.unique(bits)) <= {0, 1}
    result = retrieval_metrics(bits, labels, metric="hamming", ks=(1, 2))
    assert result.precision_at == {1: 1.0, 2: 1.0} and result.map_at_r == 1.0


def test_retrieval_contract_errors() -> None:
    with pytest.raises(ContractError):
        retrieval_metrics(np.ones((3, 2)), ["a", "b"])
    with pytest.raises(ContractError):
        retrieval_metrics(np.eye(3), ["a", "b", "c"])  # nothing shared: nothing to retrieve
    with pytest.raises(ContractError):
        retrieval_metrics(np.full((2, 4), 0.5), ["a", "a"], metric="hamming")


# -- baselines -------------------------------------------------------------------------------------


def test_pixel_features_are_unit_vectors_and_handle_blank_and_stacks() -> None:
    rng = np.random.default_rng(4)
    stack = rng.random((2, 64, 48)).astype(np.float32)
    blank = np.zeros((2, 64, 48), dtype=np.float32)
    features = pixel_features([stack, blank, stack], size=8)
    assert features.shape == (3, 2 * 8 * 8) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert float(features[0] @ features[2]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ImageError):
        pixel_features([np.zeros((2, 2, 2, 2))])
    with pytest.raises(ContractError):
        pixel_features([np.zeros((4, 4)), np.zeros((2, 4, 4))])


def test_hamming_similarity_known_values() -> None:
    a = np.array([[0, 0, 1, 1], [1, 1, 1, 1]], dtype=np.uint8)
    b = np.array([[0, 0, 1, 1], [0, 0, 0, 0]], dtype=np.uint8)
    np.testing.assert_allclose(hamming_similarity(a, b), [[1.0, 0.5], [0.5, 0.0]])


# -- novelty ---------------------------------------------------------------------------------------


def test_novelty_metrics_for_perfect_and_given_threshold() -> None:
    known = np.array([0.01, 0.02, 0.03, 0.05])
    novel = np.array([0.2, 0.3, 0.25])
    best = novelty_metrics(known, novel)
    assert best.auroc == 1.0 and best.f1 == 1.0 and 0.05 < best.threshold < 0.2
    fixed = novelty_metrics(known, novel, threshold=0.025)
    assert fixed.precision == pytest.approx(3 / 5) and fixed.recall == 1.0 and fixed.fpr == 0.5


def test_evaluate_novelty_with_library() -> None:
    rng = np.random.default_rng(5)
    library = unit(rng.normal(size=(50, 16)))
    known = unit(library[:20] + 0.01 * rng.normal(size=(20, 16)))
    novel = unit(rng.normal(size=(15, 16)))
    metrics, known_scores, novel_scores = evaluate_novelty(library, known, novel)
    assert metrics.auroc == 1.0 and known_scores.max() < novel_scores.min()
    assert known_scores.min() >= 0.0


# -- maps and silhouettes ---------------------------------------------------------------------------


def blobs(n_per: int = 25, seed: int = 6) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = np.eye(12)[:3]
    rows = np.vstack([c + 0.05 * rng.normal(size=(n_per, 12)) for c in centres])
    return unit(rows), [f"c{i}" for i in range(3) for _ in range(n_per)]


def test_silhouette_high_for_separated_labels_and_undefined_for_one_value() -> None:
    features, labels = blobs()
    score = silhouette(features, labels)
    assert score is not None and score > 0.8
    assert silhouette(features, ["x"] * len(labels)) is None


def test_tsne_map_writes_png(tmp_path: Path) -> None:
    features, labels = blobs()
    score, maps = embedding_maps(features, labels, tmp_path, label_name="family", methods=("tsne",))
    assert score is not None and score > 0.8
    assert maps[0].coords.shape == (75, 2)
    assert maps[0].png is not None and maps[0].png.stat().st_size > 1000
    assert maps[0].silhouette_2d is not None and maps[0].silhouette_2d > 0.5


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("LITHOWATCH_SLOW_TESTS"),
    reason="UMAP's first fit compiles numba code (~15-25 s); set LITHOWATCH_SLOW_TESTS=1",
)
def test_umap_map_writes_png(tmp_path: Path) -> None:
    features, labels = blobs()
    _, maps = embedding_maps(features, labels, tmp_path, methods=("umap",))
    assert maps[0].png is not None and maps[0].png.exists()
    assert maps[0].silhouette_2d is not None and maps[0].silhouette_2d > 0.5


# -- transfer -------------------------------------------------------------------------------------


def test_transfer_beats_noise_features() -> None:
    rng = np.random.default_rng(7)
    n = 200
    severity = rng.uniform(0, 10, n)
    defect = np.where(severity > 5, "bridge", "pinch")
    groups = [f"g{i // 4}" for i in range(n)]
    informative = np.c_[severity + 0.3 * rng.normal(size=n), rng.normal(size=(n, 5))]
    noise = rng.normal(size=(n, 6))
    good = transfer_score(informative, severity.tolist(), "regression", groups=groups)
    bad = transfer_score(noise, severity.tolist(), "regression", groups=groups)
    assert good.mean > 0.95 and bad.mean < 0.1 and good.cv.startswith("GroupKFold")
    acc = transfer_score(informative, defect.tolist(), "classification", groups=groups)
    majority = max((defect == "bridge").mean(), (defect == "pinch").mean())
    assert acc.mean > 0.9 and acc.chance == pytest.approx(majority)
    with pytest.raises(ConfigError):
        transfer_score(noise, [None] * n, "regression")


# -- commands -------------------------------------------------------------------------------------


def test_eval_functions_write_reports(tmp_path: Path) -> None:
    features, groups = identical_groups(n_groups=8, per_group=6, dim=16)
    rng = np.random.default_rng(8)
    features = unit(features + 0.01 * rng.normal(size=features.shape))
    labels = [{"group": g, "family": f"f{int(g[1:]) % 2}", "severity": float(int(g[1:])),
               "defect": "bridge" if int(g[1:]) % 2 else "none"} for g in groups]
    pixels = unit(rng.normal(size=(len(labels), 20)))
    sets: dict[str, tuple[np.ndarray, Metric]] = {
        "encoder": (features, "cosine"),
        "pixels": (pixels, "cosine"),
    }
    summary = eval_retrieval(sets, labels, report_dir=tmp_path / "r")
    assert summary["results"]["encoder"]["map_at_r"] > 0.99
    assert summary["results"]["pixels"]["map_at_r"] < 0.5
    assert "retrieval.png" in (tmp_path / "r" / "index.html").read_text()
    novelty = eval_novelty(sets, labels, report_dir=tmp_path / "n")
    assert novelty["results"]["encoder"]["auroc"] == 1.0
    assert (tmp_path / "n" / "novelty_roc_encoder.png").exists()
    clusters = eval_clusters(features, labels, label="group", methods=("tsne",), report_dir=tmp_path / "c")
    assert clusters["silhouette_embedding_cosine"] > 0.9
    transfer = eval_transfer(
        {"encoder": features, "pixels": pixels}, labels, n_splits=4, report_dir=tmp_path / "t"
    )
    assert transfer["tasks"]["defect"]["encoder"]["mean"] >= transfer["tasks"]["defect"]["pixels"]["mean"]
    assert (tmp_path / "t" / "index.html").exists()
    assert "transfer.png" in (tmp_path / "t" / "index.html").read_text()


def test_eval_transfer_log_severity_and_defect_type_among_defective_items() -> None:
    rng = np.random.default_rng(12)
    n = 240
    kinds = np.array(["none", "bridge", "pinch"])[rng.integers(0, 3, n)]
    area = np.where(kinds == "none", 0.0, np.exp(rng.uniform(3.0, 9.0, n)))  # two orders of magnitude
    labels = [{"group": f"g{i // 4}", "defect": str(k), "severity": float(a)}
              for i, (k, a) in enumerate(zip(kinds, area, strict=True))]
    log_area = np.log1p(area)
    informative = np.c_[log_area, kinds == "bridge", kinds == "pinch"] + 0.05 * rng.normal(size=(n, 3))
    noise = rng.normal(size=(n, 3))
    tasks = eval_transfer({"encoder": informative, "noise": noise}, labels, n_splits=4)["tasks"]
    defective = kinds != "none"
    log_task = tasks["log1p(severity)"]
    assert log_task["encoder"]["n"] == int(defective.sum())  # defective items only
    assert log_task["encoder"]["mean"] > 0.95 and log_task["noise"]["mean"] < 0.1
    assert log_task["encoder"]["chance"] == 0.0
    assert tasks["log1p(severity)"]["encoder"]["mean"] > tasks["severity"]["encoder"]["mean"]
    by_type = tasks["defect (defective only)"]
    majority = max((kinds == "bridge").sum(), (kinds == "pinch").sum()) / defective.sum()
    assert by_type["encoder"]["chance"] == pytest.approx(majority)
    assert by_type["encoder"]["mean"] > 0.95 and by_type["encoder"]["n"] == int(defective.sum())
    assert tasks["defect"]["encoder"]["n"] == n


def test_eval_retrieval_command_with_baselines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(9)
    with DatasetWriter(tmp_path / "data") as writer:
        for g in range(5):
            base = (rng.random((32, 32)) > 0.5).astype(np.float32)
            for v in range(3):
                writer.add(f"g{g}v{v}", base, base, 4.0, {"group": f"g{g}"})
    features, _ = identical_groups(n_groups=15, per_group=1, dim=8)
    np.save(tmp_path / "emb.npy", features)  # unrelated vectors: the encoder does badly here
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "eval", "retrieval", "--dataset", str(tmp_path / "data"), "--embeddings", str(tmp_path / "emb.npy"),
        "--json", str(tmp_path / "out.json"), "--pixel-size", "8",
    ])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["results"]) == {"encoder", "pixels8", "phash"}
    assert summary["results"]["pixels8"]["map_at_r"] == 1.0
    assert summary["results"]["phash"]["map_at_r"] == 1.0
    assert json.loads((tmp_path / "out.json").read_text()) == summary
