"""Baseline features for retrieval and transfer: downsampled pixels and perceptual hashes.

An image is a 2-D float array in [0, 1] or a ``(C, H, W)`` stack (e.g. mask and
print); channels are processed separately and concatenated. :func:`baseline_features`
computes both for every item of a data set, item by item, so a large data set never
sits in memory as full-size images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from shared.errors import ContractError, ImageError

if TYPE_CHECKING:
    from shared.dataset import Dataset

PHASH_BITS_PER_CHANNEL = 64


def _channels(image: np.ndarray, index: int) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or min(array.shape) == 0:
        raise ImageError(f"image {index}: expected (H, W) or (C, H, W), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ImageError(f"image {index}: contains NaN or infinity")
    return array.astype(np.float32, copy=False)


def _check_batch(images: Sequence[np.ndarray]) -> None:
    if len(images) == 0:
        raise ContractError("no images")


def pixel_features(images: Sequence[np.ndarray], size: int = 32, center: bool = True) -> np.ndarray:
    """Area-downsampled pixels, per-vector mean removed (``center``), L2-normalised.

    With centring, cosine between two vectors is the Pearson correlation of the
    thumbnails; a constant thumbnail (blank clip) becomes a tiny fixed vector
    instead of a zero one, so cosine stays defined.
    """
    _check_batch(images)
    rows = []
    for i, image in enumerate(images):
        planes = _channels(image, i)
        small = [cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA) for p in planes]
        rows.append(np.concatenate([s.ravel() for s in small]))
    lengths = {r.size for r in rows}
    if len(lengths) != 1:
        raise ContractError("images have different channel counts")
    features = np.stack(rows).astype(np.float64)
    if center:
        features -= features.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    flat = norms[:, 0] < 1e-9
    features[flat] = 1.0
    norms[flat] = np.sqrt(features.shape[1])
    return (features / norms).astype(np.float32)


def phash_features(images: Sequence[np.ndarray]) -> np.ndarray:
    """64-bit DCT perceptual hash per channel (OpenCV ``img_hash.pHash``) as 0/1 uint8 bits."""
    _check_batch(images)
    rows = []
    for i, image in enumerate(images):
        planes = _channels(image, i)
        bits = []
        for plane in planes:
            as_u8 = np.clip(np.rint(plane * 255.0), 0, 255).astype(np.uint8)
            digest = cv2.img_hash.pHash(as_u8)
            bits.append(np.unpackbits(digest.ravel()))
        rows.append(np.concatenate(bits))
    lengths = {r.size for r in rows}
    if len(lengths) != 1:
        raise ContractError("images have different channel counts")
    return np.stack(rows).astype(np.uint8)


def hamming_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - hamming / bits`` between every row of ``a`` and every row of ``b`` (0/1 bits)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ContractError(f"bit matrices of shapes {a.shape} and {b.shape} are not comparable")
    agreements = a @ b.T + (1.0 - a) @ (1.0 - b).T
    return agreements / a.shape[1]


def _item_planes(mask: np.ndarray, simulated: np.ndarray) -> np.ndarray:
    """(2, H, W) stack of mask and print; the print is resized to the mask when they differ."""
    if simulated.shape != mask.shape:
        simulated = cv2.resize(simulated, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_AREA)
    return np.stack([mask, simulated]).astype(np.float32)


def baseline_features(
    dataset: Dataset, *, pixel_size: int = 32, with_phash: bool = True, progress: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixel thumbnails (mask + print, normalised) and pHash bits (mask + print) of every item."""
    pixels: list[np.ndarray] = []
    hashes: list[np.ndarray] = []
    for item in tqdm(dataset.items, desc="baseline features", unit="item", disable=not progress):
        planes = _item_planes(item.load_mask(), item.load_simulated())
        pixels.append(pixel_features([planes], size=pixel_size)[0])
        if with_phash:
            hashes.append(phash_features([planes])[0])
    return np.stack(pixels), (np.stack(hashes) if with_phash else None)
