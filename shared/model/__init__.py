"""The lithowatch encoder: (mask, aligned print) -> L2-normalised vector.

Public surface::

    build_untrained(arch, channels, input_size, seed, ..., nm_per_px, descriptor) -> Encoder  # baseline
    load_encoder(path, device="auto") -> Encoder                   # verified checkpoint
    shared.model.default.default_model_path() -> Path              # the shipped checkpoint
    save_encoder(encoder, path, metadata) -> CheckpointMetadata
    embed_dataset(dataset, ckpt_path, batch_size, device, progress) -> (N, dim) float32
    resolve_device("auto" | "cpu" | "cuda") -> torch.device
    Encoder.preprocess / .embed / .reconstruction_error (autoencoder only), each with one
        ``nm_per_px`` per clip when the model has a canonical scale
    Encoder.with_descriptor(DescriptorSpec | None) -> Encoder     # the hybrid vector's settings

A checkpoint is a directory: ``model.safetensors`` + ``metadata.json`` (see
:mod:`shared.model.checkpoint`). Training is a toolkit: :mod:`toolkit.training`.
"""

from __future__ import annotations

from shared.model.checkpoint import CheckpointMetadata, load_encoder, read_metadata, save_encoder
from shared.model.embed import embed_dataset
from shared.model.encoder import Encoder, EncoderSpec, build_untrained, resolve_device

__all__ = [
    "CheckpointMetadata",
    "Encoder",
    "EncoderSpec",
    "build_untrained",
    "embed_dataset",
    "load_encoder",
    "read_metadata",
    "resolve_device",
    "save_encoder",
]
