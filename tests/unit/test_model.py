"""Encoder, checkpoints, training and the embed core on tiny models and images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import layout_canvas, make_dataset, one_torch_thread, variant_window  # noqa: F401

from services.embed.core import EmbedCore, EmbedCoreSettings
from shared.dataset import read_dataset
from shared.errors import ConfigError, ImageError
from shared.model import (
    build_untrained,
    embed_dataset,
    load_encoder,
    resolve_device,
    save_encoder,
)
from shared.model.checkpoint import METADATA_NAME, WEIGHTS_NAME
from toolkit.training.cli import register
from toolkit.training.evaluate import precision_at_k
from toolkit.training.train import TrainConfig, train_encoder

TINY = "resnet18-w16"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def pairs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(5)
    out = [variant_window(layout_canvas(rng), rng) for _ in range(10)]
    return [m for m, _ in out], [p for _, p in out]


def test_untrained_vectors_are_unit_length_with_the_declared_dim(pairs: tuple[list, list]) -> None:
    for arch, dim in ((TINY, 128), ("resnet18", 512)):
        encoder = build_untrained(arch, "mask,print,diff", input_size=32, device="cpu")
        vectors = encoder.embed(*pairs)
        assert vectors.shape == (10, dim) and encoder.dim == dim
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert encoder.channels == "mask,print,diff" and encoder.input_size == 32
    assert build_untrained("resnet50", input_size=32, device="cpu").dim == 2048


@pytest.mark.parametrize("arch", [TINY, "resnet18", "resnet50"])
def test_fused_encoder_gives_the_same_vectors_and_cannot_be_saved(
    arch: str, pairs: tuple[list, list], tmp_path: Path
) -> None:
    """BatchNorm folded into the convolutions: same vectors up to float rounding."""
    encoder = build_untrained(arch, "mask,print", input_size=32, device="cpu", projection_dim=16)
    before = encoder.embed(*pairs)
    assert encoder.fuse_for_inference() and encoder.fused
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.net.modules())
    np.testing.assert_allclose(encoder.embed(*pairs), before, atol=1e-5)
    with pytest.raises(ConfigError, match="fused"):
        save_encoder(encoder, tmp_path / "fused")


def test_untrained_is_deterministic_in_the_seed(pairs: tuple[list, list]) -> None:
    a = build_untrained(TINY, input_size=32, seed=3, device="cpu")
    b = build_untrained(TINY, input_size=32, seed=3, device="cpu")
    c = build_untrained(TINY, input_size=32, seed=4, device="cpu")
    assert a.model_version == b.model_version != c.model_version
    assert a.model_version.startswith(f"{TINY}-untrained-")
    np.testing.assert_array_equal(a.embed(*pairs), b.embed(*pairs))


def test_preprocess_refuses_bad_images(pairs: tuple[list, list]) -> None:
    encoder = build_untrained(TINY, input_size=32, device="cpu")
    masks, prints = pairs
    x = encoder.preprocess(masks[:2], prints[:2])
    assert x.shape == (2, 2, 32, 32) and x.dtype == torch.float32
    with pytest.raises(ImageError, match="item 0"):
        encoder.preprocess([masks[0].astype(np.float64)], [prints[0]])
    with pytest.raises(ImageError):
        encoder.preprocess([masks[0]], [prints[0][:10]])
    with pytest.raises(ImageError):
        encoder.embed([np.zeros((4, 4, 3), np.float32)], [np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ImageError):
        encoder.embed(masks[:2], prints[:1])


def test_checkpoint_round_trip_gives_identical_vectors(tmp_path: Path, pairs: tuple[list, list]) -> None:
    encoder = build_untrained(TINY, "mask,print,diff", input_size=32, seed=1, device="cpu")
    meta = save_encoder(encoder, tmp_path / "ckpt", {"metrics": {"p_at_5": 0.5}})
    loaded = load_encoder(tmp_path / "ckpt", device="cpu")
    assert loaded.model_version == encoder.model_version == meta.model_version
    assert (loaded.dim, loaded.channels, loaded.input_size) == (encoder.dim, encoder.channels, 32)
    np.testing.assert_array_equal(loaded.embed(*pairs), encoder.embed(*pairs))
    raw = json.loads((tmp_path / "ckpt" / METADATA_NAME).read_text())
    assert raw["embedding_dim"] == 128 and raw["metrics"] == {"p_at_5": 0.5}


def _saved(tmp_path: Path) -> Path:
    ckpt = tmp_path / "ckpt"
    save_encoder(build_untrained(TINY, input_size=32, device="cpu"), ckpt)
    return ckpt


def test_truncated_weights_are_refused(tmp_path: Path) -> None:
    ckpt = _saved(tmp_path)
    weights = ckpt / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="truncated"):
        load_encoder(ckpt, device="cpu")


def test_garbage_weights_with_matching_digest_are_refused(tmp_path: Path) -> None:
    ckpt = _saved(tmp_path)
    garbage = b"not a safetensors file at all"
    (ckpt / WEIGHTS_NAME).write_bytes(garbage)
    meta = json.loads((ckpt / METADATA_NAME).read_text())
    import hashlib

    meta["weights_sha256"] = hashlib.sha256(garbage).hexdigest()
    (ckpt / METADATA_NAME).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="safetensors"):
        load_encoder(ckpt, device="cpu")


def test_bad_json_metadata_is_refused(tmp_path: Path) -> None:
    ckpt = _saved(tmp_path)
    (ckpt / METADATA_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_encoder(ckpt, device="cpu")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("channels", ["mask", "print", "diff"], "do not fit"),
        ("channels", ["print"], "channels"),
        ("arch", "resnet34", "do not fit"),
        ("embedding_dim", 64, "dim"),
        ("model_version", "resnet18-w16-untrained-000000000000", "model_version"),
        ("objective", "magic", "objective"),
    ],
)
def test_mismatched_metadata_is_refused(tmp_path: Path, field: str, value: object, message: str) -> None:
    ckpt = _saved(tmp_path)
    meta = json.loads((ckpt / METADATA_NAME).read_text())
    meta[field] = value
    if field == "channels" and isinstance(value, list) and len(value) == 3:
        meta["normalisation"] = {"mean": [0.5, 0.5, 0.0], "std": [0.5, 0.5, 0.5]}
    (ckpt / METADATA_NAME).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=message):
        load_encoder(ckpt, device="cpu")


def test_missing_checkpoint_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_encoder(tmp_path / "nothing", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="missing"):
        load_encoder(tmp_path / "empty", device="cpu")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")


def test_precision_at_k_known_answer() -> None:
    vectors = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99], [-1, 0]], dtype=np.float32)
    groups = ["a", "a", "b", "b", "c"]
    assert precision_at_k(vectors, groups, k=1) == 1.0
    # k=2: the denominator is capped at the one other member of each group
    assert precision_at_k(vectors, groups, k=2) == 1.0
    swapped = ["a", "b", "b", "a", "c"]
    assert precision_at_k(vectors, swapped, k=1) == 0.0


@pytest.mark.parametrize(
    ("objective", "arch", "channels"),
    [
        ("contrastive", TINY, "mask,print"),
        ("supervised", TINY, "mask,print,diff"),
        ("autoencoder", "autoencoder", "mask,print"),
    ],
)
def test_one_epoch_of_each_objective_writes_a_loadable_checkpoint(
    tmp_path: Path, dataset_dir: Path, objective: str, arch: str, channels: str, pairs: tuple[list, list]
) -> None:
    cfg = TrainConfig(
        objective=objective,
        arch=arch,
        channels=channels,
        input_size=32,
        epochs=1,
        batch_size=16,
        val_fraction=0.25,
        seed=0,
        device="cpu",
        threads=1,
    )
    result = train_encoder(dataset_dir, tmp_path / "ckpt", cfg, progress=False)
    assert (tmp_path / "ckpt" / "loss_curve.png").stat().st_size > 0
    assert result.losses and all(np.isfinite(result.losses))
    loaded = load_encoder(tmp_path / "ckpt", device="cpu")
    assert loaded.model_version == result.metadata.model_version
    assert loaded.model_version.startswith(f"{arch}-{objective}-")
    metrics = result.metadata.metrics
    assert metrics["val_groups"] == 3 and 0.0 <= metrics["val_p_at_5"] <= 1.0
    assert 0.0 <= metrics["val_p_at_5_untrained"] <= 1.0
    assert len(result.metadata.training["dataset_fingerprint"]) == 64
    np.testing.assert_allclose(np.linalg.norm(loaded.embed(*pairs), axis=1), 1.0, atol=1e-5)
    if objective == "autoencoder":
        errors = loaded.reconstruction_error(*pairs)
        assert errors.shape == (10,) and (errors >= 0).all()
    else:
        with pytest.raises(ConfigError, match="autoencoder"):
            loaded.reconstruction_error(*pairs)


def test_training_is_deterministic_in_the_seed(tmp_path: Path, dataset_dir: Path) -> None:
    cfg = TrainConfig(
        objective="contrastive",
        arch=TINY,
        input_size=32,
        epochs=1,
        batch_size=16,
        val_fraction=0.0,
        seed=7,
        device="cpu",
        threads=1,
    )
    a = train_encoder(dataset_dir, tmp_path / "a", cfg, progress=False)
    b = train_encoder(dataset_dir, tmp_path / "b", cfg, progress=False)
    assert a.metadata.model_version == b.metadata.model_version


def test_train_cli_runs_and_refuses_bad_options(tmp_path: Path, dataset_dir: Path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "train",
            "--dataset",
            str(dataset_dir),
            "--objective",
            "contrastive",
            "--backbone",
            TINY,
            "--input-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "ckpt"),
            "--threads",
            "1",
            "--augment-shift-px",
            "4",
            "--print-jitter",
            "0.5",
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    assert (tmp_path / "ckpt" / WEIGHTS_NAME).is_file()
    config = json.loads((tmp_path / "ckpt" / "metadata.json").read_text())["training"]["config"]
    assert config["max_shift_px"] == 4.0 and config["print_jitter"] == 0.5  # recorded with the model
    too_far = parser.parse_args(
        [
            "train",
            "--dataset",
            str(dataset_dir),
            "--input-size",
            "32",
            "--augment-shift-px",
            "9",
            "--out",
            str(tmp_path / "far"),
            "--no-progress",
        ]
    )
    with pytest.raises(ConfigError, match="augment-shift-px"):
        too_far.func(too_far)
    bad = parser.parse_args(
        [
            "train",
            "--dataset",
            str(dataset_dir),
            "--objective",
            "supervised",
            "--backbone",
            "autoencoder",
            "--out",
            str(tmp_path / "bad"),
            "--no-progress",
        ]
    )
    with pytest.raises(ConfigError, match="autoencoder"):
        bad.func(bad)


def test_embed_dataset_matches_encoder(tmp_path: Path, dataset_dir: Path) -> None:
    encoder = build_untrained(TINY, input_size=32, device="cpu")
    save_encoder(encoder, tmp_path / "ckpt")
    dataset = read_dataset(dataset_dir)
    vectors = embed_dataset(dataset, tmp_path / "ckpt", batch_size=5, device="cpu", progress=False)
    direct = encoder.embed([it.load_mask() for it in dataset], [it.load_simulated() for it in dataset])
    assert vectors.shape == (len(dataset), encoder.dim)
    np.testing.assert_allclose(vectors, direct, atol=1e-6)


def test_embed_core_matches_encoder_and_counts_model_time(pairs: tuple[list, list]) -> None:
    encoder = build_untrained(TINY, input_size=32, device="cpu")
    ticks = iter(float(t) for t in range(1000))
    core = EmbedCore(encoder, EmbedCoreSettings(max_batch_size=4), clock=lambda: next(ticks))
    items = list(zip(*pairs, strict=True))
    vectors = core.embed_batch(items)
    np.testing.assert_allclose(vectors, encoder.embed(*pairs), atol=1e-6)
    stats = core.stats()
    assert (stats.batches, stats.items) == (3, 10)  # 10 items in chunks of 4
    assert stats.model_seconds == 3.0  # one fake tick per model call
    assert 0.0 < core.take_busy_ratio() <= 1.0
    assert core.embed_batch([]).shape == (0, encoder.dim)
    assert core.model_version == encoder.model_version and core.dim == encoder.dim
    with pytest.raises(ImageError, match="item 1"):
        core.embed_batch([items[0], (items[1][0], items[1][1][:5])])
