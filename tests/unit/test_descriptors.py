"""Hybrid embeddings: fixed pixel and spectral descriptors beside the learned vector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from shared.errors import ConfigError
from shared.model import build_untrained, load_encoder, save_encoder
from shared.model.checkpoint import METADATA_NAME
from shared.model.descriptors import DescriptorSpec, hybrid_vector, pixel_part, spectral_part


def _layout(seed: int, size: int = 64, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Random Manhattan bars on a canvas larger than the clip, cut at ``shift``."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((size + 16, size + 16), np.float32)
    for _ in range(10):
        x, y = rng.integers(0, size + 8, 2)
        w, h = (
            (rng.integers(3, 8), rng.integers(12, 30))
            if rng.random() < 0.5
            else (rng.integers(12, 30), rng.integers(3, 8))
        )
        canvas[y : y + h, x : x + w] = 1.0
    return canvas[8 + shift[1] : 8 + shift[1] + size, 8 + shift[0] : 8 + shift[0] + size].copy()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


def test_a_small_shift_moves_each_descriptor_less_than_another_layout() -> None:
    spec = DescriptorSpec()
    base, moved, other = (
        torch.from_numpy(_layout(s, shift=sh)) for s, sh in ((1, (0, 0)), (1, (2, 1)), (2, (0, 0)))
    )
    masks = torch.stack([base, moved, other])
    spectral = spectral_part(masks, spec)
    pixels = pixel_part(torch.stack([masks, masks], dim=1), spec)
    for part in (spectral, pixels):
        assert torch.allclose(part.norm(dim=1), torch.ones(3), atol=1e-5)
        assert _cos(part[0], part[1]) > 0.8
        assert _cos(part[0], part[1]) > _cos(part[0], part[2]) + 0.1


def test_hybrid_cosine_is_the_weighted_mean_of_the_parts() -> None:
    spec = DescriptorSpec(learned_weight=1.0, pixel_weight=2.0, spectral_weight=0.5)
    masks = torch.stack([torch.from_numpy(_layout(s)) for s in (3, 4)])
    planes = torch.stack([masks, masks.clamp(0, 1) * 0.9], dim=1)
    learned = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    z = hybrid_vector(learned, masks, planes, spec)
    parts = [
        torch.nn.functional.normalize(learned, dim=1),
        pixel_part(planes, spec),
        spectral_part(masks, spec),
    ]
    weights = (1.0, 2.0, 0.5)
    expected = sum(w * w * _cos(p[0], p[1]) for w, p in zip(weights, parts, strict=True)) / sum(
        w * w for w in weights
    )
    assert _cos(z[0], z[1]) == pytest.approx(expected, abs=1e-5)


def test_spec_validation() -> None:
    with pytest.raises(ValidationError):
        DescriptorSpec(learned_weight=0, pixel_weight=0, spectral_weight=0)
    with pytest.raises(ValidationError):
        DescriptorSpec(pixel_weight=-1)
    with pytest.raises(ConfigError, match="pixel_grid"):
        build_untrained(
            "resnet18-w16", "mask,print", 16, descriptor=DescriptorSpec(pixel_grid=32), device="cpu"
        )
    with pytest.raises(ConfigError, match="spectral_band"):
        build_untrained(
            "resnet18-w16", "mask,print", 16, descriptor=DescriptorSpec(spectral_band=8), device="cpu"
        )


def test_hybrid_encoder_round_trip(tmp_path: Path) -> None:
    spec = DescriptorSpec(pixel_grid=8, spectral_band=4)
    enc = build_untrained("resnet18-w16", "mask,print", 32, nm_per_px=8.0, descriptor=spec, device="cpu")
    plain = build_untrained("resnet18-w16", "mask,print", 32, nm_per_px=8.0, device="cpu")
    assert enc.dim == plain.dim + 2 * 8 * 8 + 9 * 5
    assert enc.model_version != plain.model_version and "+hybrid" in enc.model_version
    masks = [_layout(s, size=64) for s in range(4)]
    prints = [np.clip(m * 0.95, 0, 1).astype(np.float32) for m in masks]
    vectors = enc.embed(masks, prints, nm_per_px=[4.0] * 4)
    assert vectors.shape == (4, enc.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    save_encoder(enc, tmp_path / "ckpt")
    loaded = load_encoder(tmp_path / "ckpt", device="cpu")
    assert loaded.model_version == enc.model_version and loaded.spec.descriptor == spec
    assert np.allclose(loaded.embed(masks, prints, nm_per_px=[4.0] * 4), vectors, atol=1e-5)
    meta_path = tmp_path / "ckpt" / METADATA_NAME
    meta = json.loads(meta_path.read_text())
    meta["descriptor"]["pixel_weight"] = (
        3.0  # another vector from the same weights: the version must not match
    )
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="model_version"):
        load_encoder(tmp_path / "ckpt", device="cpu")


def test_descriptors_only_needs_no_network_pass() -> None:
    spec = DescriptorSpec(learned_weight=0.0, pixel_grid=8, spectral_band=4)
    enc = build_untrained("resnet18-w16", "mask,print", 32, descriptor=spec, device="cpu")
    assert enc.dim == 2 * 64 + 45
    masks = [_layout(1, 32), _layout(1, 32, shift=(1, 0)), _layout(5, 32)]
    vectors = enc.embed(masks, masks)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
