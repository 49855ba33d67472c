"""The encoder shipped inside the package: it loads, embeds and is what its metadata says."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from shared.dataset import DatasetWriter
from shared.errors import ImageError
from shared.model import load_encoder
from shared.model.checkpoint import METADATA_NAME, WEIGHTS_NAME, read_metadata
from shared.model.default import DEFAULT_MODEL_DIR, default_model_path
from toolkit.evaluation.cli import register_eval
from toolkit.litho import FarmGenerator, Variant


def test_shipped_checkpoint_is_small_and_complete() -> None:
    path = default_model_path()
    assert path == DEFAULT_MODEL_DIR
    assert (path / METADATA_NAME).is_file() and (path / WEIGHTS_NAME).is_file()
    assert (path / WEIGHTS_NAME).stat().st_size < 8 * 1024 * 1024  # a few MB inside the package


def test_shipped_checkpoint_matches_its_metadata() -> None:
    meta = read_metadata(DEFAULT_MODEL_DIR)
    encoder = load_encoder(DEFAULT_MODEL_DIR, device="cpu")  # verifies the weights' sha256 and version
    assert encoder.model_version == meta.model_version
    assert encoder.dim == meta.embedding_dim
    assert encoder.spec.nm_per_px == meta.nm_per_px is not None  # a recorded canonical scale
    assert encoder.spec.descriptor == meta.descriptor is not None  # the hybrid vector it was judged as
    assert meta.training["recipe"] == "make default-model"
    assert meta.metrics["eval"]["rows"], "the figures on real layouts travel with the model"


def test_shipped_model_embeds_a_resimulation_next_to_its_layout() -> None:
    farm = FarmGenerator(seed=5, size_px=256, nm_per_px=4.0)
    layouts = [farm.new_layout() for _ in range(3)]
    samples = [farm.render(layouts[0], "a"), farm.render(layouts[0], "a", Variant((3, -2), 1.02, 20.0, 1.0))]
    samples += [farm.render(layout, f"o{i}") for i, layout in enumerate(layouts[1:])]
    encoder = load_encoder(DEFAULT_MODEL_DIR, device="cpu")
    vectors = encoder.embed([s.mask for s in samples], [s.simulated for s in samples], nm_per_px=[4.0] * 4)
    assert vectors.shape == (4, encoder.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    same = float(vectors[0] @ vectors[1])
    assert same > float(vectors[0] @ vectors[2]) and same > float(vectors[0] @ vectors[3])
    with pytest.raises(ImageError, match="nm_per_px"):
        encoder.embed([samples[0].mask], [samples[0].simulated])  # the model needs each clip's scale


def test_eval_without_a_model_uses_the_shipped_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    farm = FarmGenerator(seed=3, size_px=256, nm_per_px=4.0)
    with DatasetWriter(tmp_path / "data") as writer:
        for sample in farm.samples(4, variants_per_layout=3, max_shift_px=8):
            writer.add(sample.id, sample.mask, sample.simulated, sample.nm_per_px, sample.labels)
    parser = argparse.ArgumentParser()
    register_eval(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "retrieval", "--dataset", str(tmp_path / "data"), "--no-baselines"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model_version"] == read_metadata(DEFAULT_MODEL_DIR).model_version
    assert summary["results"]["encoder"]["precision_at"]["p@1"] == 1.0  # each result finds its own layout
