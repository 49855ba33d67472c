"""Which threshold applies to a result: the call the novelty service makes per vector.

Reads the thresholds file of :mod:`shared.index.thresholds`; beside the library so the
service needs nothing of the calibration toolkit that writes the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.errors import ContractError
from shared.index.thresholds import ThresholdsFile, load_thresholds


class ThresholdPolicy:
    """Global threshold, or the threshold of the nearest cluster centroid by cosine."""

    def __init__(self, thresholds: ThresholdsFile) -> None:
        self.file = thresholds
        self.global_threshold = float(thresholds.global_threshold)
        self.model_version = thresholds.model_version
        self._centroids: np.ndarray | None = None
        self._cluster_ids = np.zeros(0, dtype=np.int64)
        self._cluster_thresholds = np.zeros(0, dtype=np.float64)
        if thresholds.clusters:
            centroids = np.array([c.centroid for c in thresholds.clusters], dtype=np.float32)
            centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
            self._centroids = centroids
            self._cluster_ids = np.array([c.cluster_id for c in thresholds.clusters], dtype=np.int64)
            self._cluster_thresholds = np.array([c.threshold for c in thresholds.clusters])

    @classmethod
    def from_file(cls, path: str | Path) -> ThresholdPolicy:
        return cls(load_thresholds(path))

    @property
    def has_clusters(self) -> bool:
        return self._centroids is not None

    @property
    def dim(self) -> int | None:
        if self._centroids is not None:
            return int(self._centroids.shape[1])
        return self.file.embedding_dim

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim != 2:
            raise ContractError(f"expected vectors of shape (N, D), got {array.shape}")
        dim = self.dim
        if dim is not None and array.shape[1] != dim:
            raise ContractError(f"vector dimension {array.shape[1]} != thresholds dimension {dim}")
        if not np.isfinite(array).all():
            raise ContractError("vector contains NaN or infinity")
        return array

    def thresholds_for(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Threshold and cluster id (-1 when global) of each row."""
        array = self._check(vectors)
        if self._centroids is None:
            n = array.shape[0]
            return np.full(n, self.global_threshold), np.full(n, -1, dtype=np.int64)
        nearest = np.argmax(array @ self._centroids.T, axis=1)  # norm of the row does not change argmax
        return self._cluster_thresholds[nearest], self._cluster_ids[nearest]

    def threshold_for(self, vector: np.ndarray) -> tuple[float, int | None]:
        """The threshold for one embedding, and its cluster id (None with a global threshold)."""
        array = np.asarray(vector, dtype=np.float32)
        if array.ndim != 1:
            raise ContractError(f"expected one vector of shape (D,), got {array.shape}")
        thresholds, clusters = self.thresholds_for(array[None, :])
        cluster = int(clusters[0])
        return float(thresholds[0]), (None if cluster < 0 else cluster)

    def is_novel(self, novelty_score: float, vector: np.ndarray) -> tuple[bool, float, int | None]:
        threshold, cluster = self.threshold_for(vector)
        return novelty_score >= threshold, threshold, cluster
