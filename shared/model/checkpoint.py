"""Encoder checkpoints: a directory holding safetensors weights and JSON metadata.

Layout (all names fixed)::

    <ckpt>/model.safetensors   the network's state dict (safetensors: no pickle)
    <ckpt>/metadata.json       :class:`CheckpointMetadata` (architecture, channels,
                               input size, canonical nm_per_px if any, normalisation,
                               dim, objective, training data fingerprint, metrics,
                               model_version, weights sha256)
    <ckpt>/loss_curve.png      written by training (optional, never read)

Loading checks, in order: the metadata parses and validates, the weights file's
sha256 equals the recorded one (catches truncation and replacement), safetensors
parses it, the tensors fit the declared architecture exactly, and the recomputed
``model_version`` matches. Every failure is a :class:`shared.errors.ConfigError`
naming the file and the cause.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from shared.errors import ConfigError
from shared.model.descriptors import DescriptorSpec
from shared.model.encoder import OBJECTIVES, Encoder, EncoderSpec, make_model_version
from shared.model.nets import build_net, net_dim

WEIGHTS_NAME = "model.safetensors"
METADATA_NAME = "metadata.json"


class Normalisation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mean: list[float]
    std: list[float]


class CheckpointMetadata(BaseModel):
    """``metadata.json``. ``training`` and ``metrics`` are free-form records."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["lithowatch-encoder"] = "lithowatch-encoder"
    format_version: Literal[1] = 1
    model_version: str = Field(min_length=3, max_length=200)
    arch: str
    channels: list[str]
    input_size: int
    # Canonical input scale (nm per input px). Absent in legacy checkpoints (and not
    # written for them): the whole clip is resized to input_size, whatever its scale.
    nm_per_px: float | None = Field(default=None, gt=0)
    descriptor: DescriptorSpec | None = None
    normalisation: Normalisation
    embedding_dim: int = Field(gt=0)
    projection_dim: int = Field(ge=0)
    objective: str
    weights_file: str = WEIGHTS_NAME
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    torch_version: str

    def spec(self) -> EncoderSpec:
        return EncoderSpec(
            arch=self.arch,
            channels=tuple(self.channels),
            input_size=self.input_size,
            mean=tuple(self.normalisation.mean),
            std=tuple(self.normalisation.std),
            projection_dim=self.projection_dim,
            objective=self.objective,
            nm_per_px=self.nm_per_px,
            descriptor=self.descriptor,
        )


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_encoder(
    encoder: Encoder, path: str | Path, metadata: Mapping[str, Any] | None = None
) -> CheckpointMetadata:
    """Write ``encoder`` as a checkpoint directory; returns the metadata written.

    ``metadata`` may carry ``objective``, ``training`` and ``metrics``; the rest is
    taken from the encoder. Files are written to temporary names and renamed, so a
    reader never sees half a checkpoint.
    """
    if encoder.fused:
        raise ConfigError("a fused encoder (fuse_for_inference) cannot be saved: save the original")
    extra = dict(metadata or {})
    unknown = set(extra) - {"objective", "training", "metrics"}
    if unknown:
        raise ConfigError(f"unknown checkpoint metadata keys: {', '.join(sorted(unknown))}")
    objective = str(extra.get("objective", encoder.spec.objective))
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.net.state_dict().items()}
    model_version = make_model_version(
        encoder.spec.arch, objective, state, encoder.spec.nm_per_px, encoder.spec.descriptor
    )
    tmp_weights = out / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp_weights), metadata={"format": "pt", "model_version": model_version})
    digest = _file_sha256(tmp_weights)
    meta = CheckpointMetadata(
        model_version=model_version,
        arch=encoder.spec.arch,
        channels=list(encoder.spec.channels),
        input_size=encoder.spec.input_size,
        nm_per_px=encoder.spec.nm_per_px,
        descriptor=encoder.spec.descriptor,
        normalisation=Normalisation(mean=list(encoder.spec.mean), std=list(encoder.spec.std)),
        embedding_dim=encoder.dim,
        projection_dim=encoder.spec.projection_dim,
        objective=objective,
        weights_sha256=digest,
        training=dict(extra.get("training") or {}),
        metrics=dict(extra.get("metrics") or {}),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        torch_version=str(torch.__version__),
    )
    document = meta.model_dump(mode="json")
    for key in ("nm_per_px", "descriptor"):
        if document[key] is None:
            del document[key]  # a legacy checkpoint stays readable by readers that predate the field
    tmp_meta = out / (METADATA_NAME + ".tmp")
    tmp_meta.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp_weights, out / WEIGHTS_NAME)
    os.replace(tmp_meta, out / METADATA_NAME)
    return meta


def read_metadata(path: str | Path) -> CheckpointMetadata:
    """Parse and validate ``<ckpt>/metadata.json`` (no weights are read)."""
    ckpt = Path(path)
    if not ckpt.is_dir():
        raise ConfigError(f"{ckpt}: not a checkpoint directory (expected {METADATA_NAME} and {WEIGHTS_NAME})")
    meta_path = ckpt / METADATA_NAME
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{meta_path}: missing checkpoint metadata") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{meta_path}: cannot read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{meta_path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
    try:
        meta = CheckpointMetadata.model_validate(raw)
        meta.spec()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise ConfigError(f"{meta_path}: invalid metadata at {where}: {first['msg']}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{meta_path}: {exc}") from exc
    return meta


def load_encoder(path: str | Path, device: str = "auto", batch_size: int = 64) -> Encoder:
    """Load and verify a checkpoint directory; see the module docstring for the checks."""
    ckpt = Path(path)
    meta = read_metadata(ckpt)
    weights = ckpt / meta.weights_file
    if meta.weights_file != WEIGHTS_NAME:
        raise ConfigError(f"{ckpt / METADATA_NAME}: weights_file must be {WEIGHTS_NAME!r}")
    if not weights.is_file():
        raise ConfigError(f"{weights}: missing weights file")
    digest = _file_sha256(weights)
    if digest != meta.weights_sha256:
        raise ConfigError(
            f"{weights}: sha256 {digest[:12]}... does not match the metadata "
            f"({meta.weights_sha256[:12]}...); the file is truncated, corrupt or from another checkpoint"
        )
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{weights}: not a readable safetensors file ({exc})") from exc
    spec = meta.spec()
    net = build_net(spec.arch, len(spec.channels), spec.input_size, spec.projection_dim)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            f"{weights}: weights do not fit {spec.arch} with channels {spec.channels_str} "
            f"and input {spec.input_size} px ({_first_mismatch(net, state)})"
        ) from exc
    dim = net_dim(net) if spec.descriptor is None else sum(spec.descriptor.dims(net_dim(net), planes=2))
    if dim != meta.embedding_dim:
        raise ConfigError(f"{ckpt}: metadata says dim {meta.embedding_dim}, the model gives {dim}")
    expected_version = make_model_version(spec.arch, spec.objective, state, spec.nm_per_px, spec.descriptor)
    if expected_version != meta.model_version:
        raise ConfigError(
            f"{ckpt}: model_version {meta.model_version!r} does not match its weights ({expected_version!r})"
        )
    encoder = Encoder(net, spec, device=device, batch_size=batch_size, model_version=meta.model_version)
    encoder.metadata = meta
    return encoder


def _first_mismatch(net: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    own = net.state_dict()
    for name, tensor in own.items():
        if name not in state:
            return f"missing {name}"
        if tuple(state[name].shape) != tuple(tensor.shape):
            return f"{name}: file {tuple(state[name].shape)} vs expected {tuple(tensor.shape)}"
    extra = sorted(set(state) - set(own))
    return f"unexpected {extra[0]}" if extra else "dtype mismatch"
