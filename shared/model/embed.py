"""Embedding a whole data set folder with a checkpoint (library builds, calibration)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.dataset import Dataset, DatasetItem
from shared.errors import ConfigError, ImageError
from shared.model.checkpoint import load_encoder
from shared.model.encoder import Encoder


def _load_pair(item: DatasetItem) -> tuple[np.ndarray, np.ndarray]:
    return item.load_mask(), item.load_simulated()


def embed_dataset(
    dataset: Dataset,
    ckpt_path: str | Path | Encoder,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
) -> np.ndarray:
    """``(len(dataset), dim)`` float32 unit vectors, in manifest order.

    ``ckpt_path`` may also be an already loaded :class:`Encoder`. The simulated
    images of a data set are taken as aligned to their masks (same frame), which is
    how farms and ``toolkit.litho`` write them. Each item's ``nm_per_px`` goes with
    its images, so an encoder with a canonical scale resamples every clip to it (a
    legacy encoder ignores it). Images of the next batch are decoded on a worker
    thread while the model runs.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    encoder = ckpt_path if isinstance(ckpt_path, Encoder) else load_encoder(ckpt_path, device=device)
    items = dataset.items
    out = np.empty((len(items), encoder.dim), dtype=np.float32)
    starts = list(range(0, len(items), batch_size))

    def load_batch(start: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [_load_pair(item) for item in items[start : start + batch_size]]

    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        tqdm(total=len(items), desc="embedding", unit="item", disable=not progress) as bar,
    ):
        pending = pool.submit(load_batch, starts[0]) if starts else None
        for n, start in enumerate(starts):
            pairs = pending.result() if pending is not None else []
            pending = pool.submit(load_batch, starts[n + 1]) if n + 1 < len(starts) else None
            try:
                scales = [item.nm_per_px for item in items[start : start + len(pairs)]]
                vectors = encoder.embed([p[0] for p in pairs], [p[1] for p in pairs], scales)
            except ImageError as exc:
                raise ConfigError(f"{dataset.root}: items {start}..{start + len(pairs) - 1}: {exc}") from exc
            out[start : start + len(pairs)] = vectors
            bar.update(len(pairs))
    return out
