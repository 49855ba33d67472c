"""What the calibrate and eval commands read: a data set's embeddings and labels.

Embeddings come from an encoder checkpoint (``shared.model``, imported only
here and only when a checkpoint is given) or from a saved ``.npy`` matrix, in
manifest order. The evaluation's baseline features of a data set are
:func:`toolkit.evaluation.baselines.baseline_features`.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from shared.dataset import Dataset
from shared.errors import ConfigError
from toolkit.calibration.pairs import LabelValue


def dataset_labels(dataset: Dataset) -> list[dict[str, LabelValue]]:
    return [dict(item.labels) for item in dataset.items]


def load_embeddings_file(path: str | Path, n_items: int) -> np.ndarray:
    """A ``(N, D)`` float matrix saved with ``np.save`` (no pickle), one row per manifest item."""
    path = Path(path)
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable .npy matrix ({exc})") from exc
    if matrix.ndim != 2 or matrix.shape[0] != n_items:
        raise ConfigError(f"{path}: shape {matrix.shape}, expected ({n_items}, D) for this data set")
    if not np.issubdtype(matrix.dtype, np.floating) or not np.isfinite(matrix).all():
        raise ConfigError(f"{path}: expected finite floats, got dtype {matrix.dtype}")
    return matrix.astype(np.float32)


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def embed(
    dataset: Dataset,
    *,
    model: str | None,
    embeddings_file: str | None,
    model_version: str | None,
    batch_size: int,
    device: str,
) -> tuple[np.ndarray, str]:
    """Embeddings of every item and the model version they came from."""
    if model is None and embeddings_file is not None:
        matrix = load_embeddings_file(embeddings_file, len(dataset))
        version = model_version or f"embeddings-{file_digest(embeddings_file)[:12]}"
        return matrix, version
    if model is not None and embeddings_file is not None:
        raise ConfigError("give one of --model CKPT or --embeddings FILE.npy, not both")
    from shared.model import embed_dataset, load_encoder  # torch: only when a checkpoint is used
    from shared.model.default import default_model_path

    model = model or str(default_model_path())

    print(f"loading encoder {model}", file=sys.stderr)
    encoder = load_encoder(model, device=device, batch_size=batch_size)
    matrix = embed_dataset(dataset, encoder, batch_size=batch_size, device=device)
    if model_version is not None and model_version != encoder.model_version:
        raise ConfigError(
            f"--model-version {model_version!r} differs from the checkpoint's {encoder.model_version!r}"
        )
    return np.asarray(matrix, dtype=np.float32), str(encoder.model_version)
