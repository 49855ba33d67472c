"""Training data in memory: a data set folder decoded once, brought to the input size.

Each clip is resized whole (legacy) or, given the encoder's canonical ``nm_per_px``,
resampled from its own scale and centre-cropped or padded exactly as
:meth:`shared.model.encoder.Encoder.preprocess` does, so training sees what inference sees.

The whole set is held as two ``(N, S, S)`` float32 stacks (masks and aligned prints)
plus integer codes for the labels training uses. At 64 px that is 32 KiB per item,
so tens of thousands of items fit comfortably.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from shared.dataset import Dataset
from shared.errors import ConfigError, ImageError
from shared.model.preprocess import check_nm_per_px, resize_pairs

NO_LABEL = -1


def dataset_fingerprint(dataset: Dataset) -> str:
    """sha256 of the sorted manifest ids: identifies the training data in a checkpoint."""
    h = hashlib.sha256()
    for item_id in sorted(item.id for item in dataset):
        h.update(item_id.encode("utf-8") + b"\n")
    return h.hexdigest()


def encode_labels(values: Sequence[object]) -> tuple[np.ndarray, list[str]]:
    """Strings -> integer codes (``NO_LABEL`` for missing), plus the sorted vocabulary."""
    present = sorted({str(v) for v in values if v is not None})
    index = {name: i for i, name in enumerate(present)}
    codes = np.array([index[str(v)] if v is not None else NO_LABEL for v in values], dtype=np.int64)
    return codes, present


@dataclass
class TrainingSet:
    """Decoded images and label codes.

    ``groups`` falls back to one group per item. ``variant_keys`` is what
    contrastive training treats as "the same thing": the group for defect-free
    items, the item itself for an item with an injected defect (a defect is not a
    process variant of its layout, and should stay distinguishable from it).
    """

    ids: list[str]
    masks: np.ndarray
    prints: np.ndarray
    groups: np.ndarray
    families: np.ndarray
    defects: np.ndarray
    variant_keys: np.ndarray
    vocab: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: np.ndarray) -> TrainingSet:
        return TrainingSet(
            ids=[self.ids[i] for i in keep],
            masks=self.masks[keep],
            prints=self.prints[keep],
            groups=self.groups[keep],
            families=self.families[keep],
            defects=self.defects[keep],
            variant_keys=self.variant_keys[keep],
            vocab=self.vocab,
        )


def load_training_set(
    dataset: Dataset, input_size: int, progress: bool = True, nm_per_px: float | None = None
) -> TrainingSet:
    """Decode every item of ``dataset`` at ``input_size`` px; errors name the item.

    ``nm_per_px`` is the canonical input scale (None: resize each clip whole); an
    item that cannot be brought to it is a :class:`ConfigError` naming the item.
    """
    if nm_per_px is not None:
        try:
            check_nm_per_px(nm_per_px, "the canonical scale")
        except ImageError as exc:
            raise ConfigError(str(exc)) from exc
    n = len(dataset)
    masks = np.empty((n, input_size, input_size), dtype=np.float32)
    prints = np.empty_like(masks)
    for i, item in enumerate(tqdm(dataset.items, desc="loading images", unit="item", disable=not progress)):
        try:
            m, p = resize_pairs(
                [item.load_mask()],
                [item.load_simulated()],
                input_size,
                [item.nm_per_px],
                canonical_nm_per_px=nm_per_px,
            )
        except ImageError as exc:
            raise ConfigError(f"data set item {item.id!r}: {exc}") from exc
        masks[i], prints[i] = m[0], p[0]
    groups_raw = [item.labels.get("group") for item in dataset]
    groups_raw = [
        g if g is not None else f"item:{item.id}" for g, item in zip(groups_raw, dataset, strict=True)
    ]
    groups, group_vocab = encode_labels(groups_raw)
    keys_raw = [
        g if str(item.labels.get("defect", "none")) in ("none", "None") else f"item:{item.id}"
        for g, item in zip(groups_raw, dataset, strict=True)
    ]
    variant_keys, _ = encode_labels(keys_raw)
    families, family_vocab = encode_labels(dataset.labels_of("family"))
    defects, defect_vocab = encode_labels(dataset.labels_of("defect"))
    return TrainingSet(
        ids=[item.id for item in dataset],
        masks=masks,
        prints=prints,
        groups=groups,
        families=families,
        defects=defects,
        variant_keys=variant_keys,
        vocab={"group": group_vocab, "family": family_vocab, "defect": defect_vocab},
    )


def split_by_group(groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and validation items; whole groups go to one side."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    n_val = round(val_fraction * unique.size)
    n_val = min(max(n_val, 1), unique.size - 1) if val_fraction > 0 and unique.size >= 2 else 0
    val_groups = rng.permutation(unique)[:n_val]
    is_val = np.isin(groups, val_groups)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
