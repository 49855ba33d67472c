"""Balanced "same pattern" / "different pattern" pairs sampled from labels.

A pair is *same* when both items carry the same value of a label (usually
``group``: the same layout) and *different* otherwise. Items without the label
take part in no pair. Sampling is seeded, balanced (as many different pairs as
same pairs) and capped, so a large data set costs a bounded number of dot products.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.errors import ConfigError, ContractError
from toolkit.calibration.similarity import l2_normalise

LabelValue = str | int | float | bool | None
MAX_PAIRS_DEFAULT = 20_000


def encode_labels(labels: Sequence[LabelValue]) -> tuple[np.ndarray, list[str]]:
    """Integer codes per item (-1 where the label is missing) and the code -> name table."""
    names: dict[str, int] = {}
    codes = np.full(len(labels), -1, dtype=np.int64)
    for i, value in enumerate(labels):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        codes[i] = names.setdefault(str(value), len(names))
    return codes, list(names)


@dataclass(frozen=True)
class PairSample:
    same: np.ndarray  # (M, 2) int64 item indices, i < j
    different: np.ndarray  # (M, 2) int64


def sample_pairs(
    labels: Sequence[LabelValue], *, max_pairs: int = MAX_PAIRS_DEFAULT, seed: int = 0
) -> PairSample:
    """Up to ``max_pairs`` same pairs (uniform over all same pairs) and as many different pairs."""
    codes, _ = encode_labels(labels)
    rng = np.random.default_rng(seed)
    labelled = np.flatnonzero(codes >= 0)
    groups: dict[int, np.ndarray] = {}
    for code in np.unique(codes[labelled]):
        groups[int(code)] = labelled[codes[labelled] == code]
    sizes = np.array([g.size for g in groups.values()], dtype=np.int64)
    pair_counts = sizes * (sizes - 1) // 2
    total_same = int(pair_counts.sum())
    n_labelled = labelled.size
    total_diff = (n_labelled * (n_labelled - 1)) // 2 - total_same
    n_pairs = min(max_pairs, total_same, total_diff)
    if n_pairs <= 0:
        raise ConfigError(
            "cannot form both same and different pairs: need a label value shared by two items "
            "and at least two distinct values"
        )
    members = list(groups.values())
    if total_same <= n_pairs:
        same = np.array([(a, b) for g in members for ai, a in enumerate(g) for b in g[ai + 1 :]])
    else:
        same = _sample_same(members, pair_counts, n_pairs, rng)
    different = _sample_different(labelled, codes, n_pairs, rng)
    return PairSample(same.astype(np.int64).reshape(-1, 2), different.reshape(-1, 2))


def _sample_same(
    members: list[np.ndarray], pair_counts: np.ndarray, n_pairs: int, rng: np.random.Generator
) -> np.ndarray:
    """Distinct same pairs, uniform over all of them (group drawn by its pair count)."""
    chosen: set[tuple[int, int]] = set()
    probabilities = pair_counts / pair_counts.sum()
    while len(chosen) < n_pairs:
        draw = n_pairs - len(chosen)
        group_ids = rng.choice(len(members), size=draw, p=probabilities)
        for gid in group_ids:
            a, b = rng.choice(members[gid], size=2, replace=False)
            chosen.add((int(min(a, b)), int(max(a, b))))
    return np.array(sorted(chosen), dtype=np.int64)[rng.permutation(n_pairs)]


def _sample_different(
    labelled: np.ndarray, codes: np.ndarray, n_pairs: int, rng: np.random.Generator
) -> np.ndarray:
    """Distinct pairs of items with different label values, by rejection."""
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < n_pairs:
        draw = 2 * (n_pairs - len(chosen)) + 16
        a = rng.choice(labelled, size=draw)
        b = rng.choice(labelled, size=draw)
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            if codes[x] != codes[y]:
                chosen.add((min(x, y), max(x, y)))
                if len(chosen) == n_pairs:
                    break
    return np.array(list(chosen), dtype=np.int64)


def pair_similarities(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of rows."""
    normalised = l2_normalise(embeddings)
    pairs = np.asarray(pairs, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ContractError(f"pairs: expected shape (M, 2), got {pairs.shape}")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= normalised.shape[0]):
        raise ContractError("pairs: index out of range")
    return np.einsum("ij,ij->i", normalised[pairs[:, 0]], normalised[pairs[:, 1]]).astype(np.float64)
