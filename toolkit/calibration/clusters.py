"""Per-cluster novelty thresholds for libraries whose regions differ in density.

A library of dense gratings and sparse routing clips has very different
nearest-neighbour similarities in each region, so one global threshold is too
strict in one place and too lenient in the other. Library embeddings are grouped
by k-means on L2-normalised vectors; each cluster's threshold on the novelty
score is ``1 - q``-quantile of the within-cluster nearest-neighbour cosine
similarities (a query farther from the library than almost every member is from
its own neighbour is novel), clipped to ``[floor, ceiling]``. Clusters with too
few members to estimate a quantile fall back to the global threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from shared.errors import ConfigError
from toolkit.calibration.similarity import l2_normalise, top1_cosine

K_MAX_DEFAULT = 12
SILHOUETTE_SAMPLE = 2000
MIN_CLUSTER_SIZE_DEFAULT = 8
QUANTILE_DEFAULT = 0.05


@dataclass(frozen=True)
class ClusterInfo:
    cluster_id: int
    centroid: np.ndarray  # unit vector
    threshold: float
    size: int
    fallback: bool
    nn_similarity_quantile: float | None


@dataclass(frozen=True)
class ClusterModel:
    centroids: np.ndarray  # (k, D) unit vectors
    assignments: np.ndarray  # (N,) cluster of each library row
    clusters: tuple[ClusterInfo, ...]
    k_rule: str


def fit_kmeans(normalised: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length centroids and assignments by cosine to those centroids."""
    k = max(1, min(k, normalised.shape[0]))
    with threadpool_limits(limits=1):  # small fits: thread start-up costs more than it saves
        model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(normalised)
    centroids = model.cluster_centers_.astype(np.float32)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    centroids = centroids / np.maximum(norms, 1e-12)
    assignments = np.argmax(normalised @ centroids.T, axis=1)
    return centroids, assignments


def choose_k(normalised: np.ndarray, k_max: int = K_MAX_DEFAULT, seed: int = 0) -> tuple[int, str]:
    """k in 2..k_max with the best cosine silhouette on a sample (1 for tiny libraries)."""
    n = normalised.shape[0]
    upper = min(k_max, n // MIN_CLUSTER_SIZE_DEFAULT, n - 1)
    if upper < 2:
        return 1, f"k=1: {n} library vectors are too few to split"
    rng = np.random.default_rng(seed)
    sample = normalised if n <= SILHOUETTE_SAMPLE else normalised[rng.choice(n, SILHOUETTE_SAMPLE, False)]
    best_k, best_score = 1, -1.0
    for k in range(2, upper + 1):
        _, labels = fit_kmeans(sample, k, seed)
        if np.unique(labels).size < 2:
            continue
        with threadpool_limits(limits=1):
            score = float(silhouette_score(sample, labels, metric="cosine"))
        if score > best_score:
            best_k, best_score = k, score
    if best_k == 1:
        return 1, "k=1: no split gave two non-empty clusters"
    return best_k, f"k={best_k}: best cosine silhouette ({best_score:.3f}) over k=2..{upper}"


@dataclass(frozen=True)
class LibraryClusters:
    """k-means clusters of the library and each member's within-cluster NN similarity."""

    centroids: np.ndarray  # (k, D) unit vectors
    assignments: np.ndarray  # (N,)
    nn_similarity: np.ndarray  # (N,) NaN for a member alone in its cluster
    k_rule: str


def fit_library_clusters(library: np.ndarray, k: int | None = None, seed: int = 0) -> LibraryClusters:
    """Cluster the library (k by :func:`choose_k` when not given)."""
    normalised = l2_normalise(library, "library")
    if k is None:
        k, rule = choose_k(normalised, seed=seed)
    else:
        if k < 1:
            raise ConfigError(f"number of clusters must be >= 1, got {k}")
        rule = f"k={k}: given"
    centroids, assignments = fit_kmeans(normalised, k, seed)
    nn_sims = within_cluster_nn_similarity(normalised, assignments)
    return LibraryClusters(centroids, assignments, nn_sims, rule)


def thresholds_from_density(
    fitted: LibraryClusters,
    global_threshold: float,
    *,
    quantile: float = QUANTILE_DEFAULT,
    min_cluster_size: int = MIN_CLUSTER_SIZE_DEFAULT,
    floor: float = 0.0,
    ceiling: float = 2.0,
) -> ClusterModel:
    """Each cluster's threshold: ``clip(1 - quantile(NN similarities), floor, ceiling)``."""
    if not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"quantile must be in [0, 1], got {quantile}")
    if floor > ceiling:
        raise ConfigError(f"threshold floor {floor} is above the ceiling {ceiling}")
    infos = []
    for cid in range(fitted.centroids.shape[0]):
        member_sims = fitted.nn_similarity[fitted.assignments == cid]
        member_sims = member_sims[np.isfinite(member_sims)]
        size = int((fitted.assignments == cid).sum())
        if member_sims.size < max(min_cluster_size, 2):
            infos.append(ClusterInfo(cid, fitted.centroids[cid], float(global_threshold), size, True, None))
            continue
        sim_q = float(np.quantile(member_sims, quantile))
        threshold = float(np.clip(1.0 - sim_q, floor, ceiling))
        infos.append(ClusterInfo(cid, fitted.centroids[cid], threshold, size, False, sim_q))
    return ClusterModel(fitted.centroids, fitted.assignments, tuple(infos), fitted.k_rule)


def cluster_thresholds(
    library: np.ndarray,
    global_threshold: float,
    *,
    k: int | None = None,
    quantile: float = QUANTILE_DEFAULT,
    min_cluster_size: int = MIN_CLUSTER_SIZE_DEFAULT,
    floor: float = 0.0,
    ceiling: float = 2.0,
    seed: int = 0,
) -> ClusterModel:
    """Cluster the library and derive each cluster's novelty threshold from its density."""
    fitted = fit_library_clusters(library, k, seed)
    return thresholds_from_density(
        fitted,
        global_threshold,
        quantile=quantile,
        min_cluster_size=min_cluster_size,
        floor=floor,
        ceiling=ceiling,
    )


def within_cluster_nn_similarity(normalised: np.ndarray, assignments: np.ndarray) -> np.ndarray:
    """Each row's cosine similarity to its nearest *other* member of its own cluster (NaN if alone)."""
    sims = np.full(normalised.shape[0], np.nan, dtype=np.float64)
    for cid in np.unique(assignments):
        members = np.flatnonzero(assignments == cid)
        if members.size < 2:
            continue
        block = normalised[members]
        _, best = top1_cosine(block, block, exclude_self=True)
        sims[members] = best
    return sims


def assign_clusters(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid by cosine for each (normalised) vector."""
    return np.argmax(l2_normalise(vectors, "vectors") @ centroids.T, axis=1)


def cluster_threshold_of(model: ClusterModel, vectors: np.ndarray) -> np.ndarray:
    """The threshold that applies to each vector (its nearest cluster's)."""
    table = np.array([c.threshold for c in model.clusters], dtype=np.float64)
    return table[assign_clusters(vectors, model.centroids)]
