"""Array contracts checked before FAISS sees the data.

FAISS reads raw memory: a float64 array, a transposed view or a wrong width is
silently misread, and a NaN poisons every distance it touches. Each check raises
:class:`~shared.errors.ContractError` with a specific ``reason``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared.errors import ContractError

FloatMatrix = NDArray[np.float32]
_CHECK_ROWS = 16_384


def check_vectors(vectors: Any, dim: int, *, norm_tolerance: float | None = None) -> FloatMatrix:
    """Return ``vectors`` unchanged if it is a finite, C-contiguous float32 (n, dim) array.

    With ``norm_tolerance``, also require every row's L2 norm within it of 1
    (the index computes cosine similarity as an inner product).
    """
    if not isinstance(vectors, np.ndarray):
        raise ContractError(
            f"vectors must be a numpy array, got {type(vectors).__name__}", reason="vector_dtype"
        )
    if vectors.dtype != np.float32:
        raise ContractError(f"vectors must be float32, got {vectors.dtype}", reason="vector_dtype")
    if vectors.ndim != 2:
        raise ContractError(
            f"vectors must be 2-D (n, {dim}), got shape {vectors.shape}", reason="vector_dim"
        )
    if vectors.shape[1] != dim:
        raise ContractError(
            f"vectors have dimension {vectors.shape[1]}, the index expects {dim}", reason="vector_dim"
        )
    if not vectors.flags.c_contiguous:
        raise ContractError("vectors must be C-contiguous (use np.ascontiguousarray)", reason="vector_layout")
    # Row chunks bound the temporaries (a million 2048-d rows is 8 GiB).
    for start in range(0, len(vectors), _CHECK_ROWS):
        chunk = vectors[start : start + _CHECK_ROWS]
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            bad = start + int(np.flatnonzero(~finite)[0])
            raise ContractError(f"vector at row {bad} contains NaN or infinity", reason="vector_nonfinite")
        if norm_tolerance is None:
            continue
        norms = np.linalg.norm(chunk, axis=1)
        off = np.abs(norms - 1.0) > norm_tolerance
        if off.any():
            row = int(np.flatnonzero(off)[0])
            raise ContractError(
                f"vector at row {start + row} has L2 norm {norms[row]:.6f}; vectors must be L2-normalised",
                reason="vector_norm",
            )
    return vectors


def as_query_matrix(vector: Any, dim: int, *, norm_tolerance: float | None = None) -> FloatMatrix:
    """One vector (dim,) or a batch (n, dim) as a checked (n, dim) matrix."""
    if isinstance(vector, np.ndarray) and vector.ndim == 1:
        vector = vector.reshape(1, -1)
    return check_vectors(vector, dim, norm_tolerance=norm_tolerance)
