"""Retrieval metrics for embeddings: precision at k by a grouping label, cosine similarity."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.errors import ContractError


def _check_vectors(vectors: np.ndarray, n_labels: int) -> np.ndarray:
    if vectors.ndim != 2 or vectors.shape[0] != n_labels:
        raise ContractError(f"vectors of shape {vectors.shape} for {n_labels} labels", reason="vector_dim")
    if not np.isfinite(vectors).all():
        raise ContractError("vectors contain NaN or infinity", reason="vector_nonfinite")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def precision_at_k(
    vectors: np.ndarray,
    groups: Sequence[object],
    k: int = 5,
    query_mask: np.ndarray | None = None,
    block_rows: int = 1024,
) -> float:
    """Mean over queries of the share of the ``k`` nearest neighbours (cosine, self
    excluded) that carry the query's group.

    The denominator is ``min(k, n_same_group - 1)`` so that a perfect ranking scores
    1.0 even for groups smaller than ``k + 1``; queries whose group has no other
    member are skipped. ``query_mask`` restricts the queries (the search still runs
    over every vector). Returns NaN when no query qualifies.
    """
    x = _check_vectors(vectors, len(groups))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, 1e-12)
    codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    sizes = np.bincount(codes)
    queries = np.flatnonzero(sizes[codes] > 1)
    if query_mask is not None:
        queries = queries[np.asarray(query_mask, dtype=bool)[queries]]
    if queries.size == 0:
        return float("nan")
    kk = min(k, x.shape[0] - 1)
    scores: list[np.ndarray] = []
    for start in range(0, queries.size, block_rows):
        rows = queries[start : start + block_rows]
        sims = x[rows] @ x.T
        sims[np.arange(rows.size), rows] = -np.inf
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        hits = (codes[top] == codes[rows][:, None]).sum(axis=1)
        denom = np.minimum(kk, sizes[codes[rows]] - 1)
        scores.append(np.minimum(hits, denom) / denom)
    return float(np.concatenate(scores).mean())
