"""Cosine similarity helpers over L2-normalised embeddings, computed in blocks.

Every calibration and evaluation step compares vectors by cosine similarity; the
novelty score of a result is ``1 - max cosine similarity to the library`` (top-1).
Blocks keep memory at ``block_size x N`` floats instead of ``N x N``.
"""

from __future__ import annotations

import numpy as np

from shared.errors import ContractError

EPSILON_NORM = 1e-12


def check_matrix(features: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """A finite 2-D float matrix with at least one row, as C-contiguous float32."""
    array = np.asarray(features)
    if array.ndim != 2:
        raise ContractError(f"{name}: expected a 2-D array (N, D), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ContractError(f"{name}: empty array of shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise ContractError(f"{name}: expected numbers, got dtype {array.dtype}")
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ContractError(f"{name}: contains NaN or infinity")
    return out


def l2_normalise(features: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Rows scaled to unit length; an all-zero row is a contract error (no direction)."""
    matrix = check_matrix(features, name)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms <= EPSILON_NORM).any():
        bad = int(np.flatnonzero(norms[:, 0] <= EPSILON_NORM)[0])
        raise ContractError(f"{name}: row {bad} has zero norm (cosine undefined)")
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)


def top1_cosine(
    queries: np.ndarray, library: np.ndarray, *, exclude_self: bool = False, block_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Index and cosine similarity of each query's nearest library row (inputs normalised)."""
    if queries.shape[1] != library.shape[1]:
        raise ContractError(
            f"dimension mismatch: queries have {queries.shape[1]}, library has {library.shape[1]}"
        )
    if exclude_self and library.shape[0] < 2:
        raise ContractError("need at least two rows for a leave-one-out nearest neighbour")
    n_queries = queries.shape[0]
    best_index = np.empty(n_queries, dtype=np.int64)
    best_sim = np.empty(n_queries, dtype=np.float32)
    for start in range(0, n_queries, block_size):
        stop = min(start + block_size, n_queries)
        block = queries[start:stop] @ library.T
        if exclude_self:
            rows = np.arange(stop - start)
            block[rows, rows + start] = -np.inf
        arg = np.argmax(block, axis=1)
        best_index[start:stop] = arg
        best_sim[start:stop] = block[np.arange(stop - start), arg]
    return best_index, best_sim


def novelty_scores(queries: np.ndarray, library: np.ndarray, *, block_size: int = 1024) -> np.ndarray:
    """``1 - max cosine similarity to the library`` for each query (float64, in [0, 2])."""
    q = l2_normalise(queries, "queries")
    lib = l2_normalise(library, "library")
    _, best = top1_cosine(q, lib, block_size=block_size)
    return np.clip(1.0 - best.astype(np.float64), 0.0, 2.0)
