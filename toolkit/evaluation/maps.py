"""2-D maps of embeddings (UMAP, t-SNE) coloured by a label, with silhouette scores.

Silhouettes are reported twice: in the embedding space (cosine) — the number
that matters — and in the 2-D map, which only says how the picture looks.
Large sets are subsampled (seeded) so a map costs seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from shared.errors import ConfigError, ContractError
from toolkit.calibration.pairs import LabelValue, encode_labels
from toolkit.calibration.plots import colormap, new_figure, save_figure
from toolkit.calibration.similarity import l2_normalise

MapMethod = Literal["umap", "tsne"]
MAX_POINTS_DEFAULT = 3000
LEGEND_MAX_VALUES = 20


@dataclass(frozen=True)
class EmbeddingMap:
    method: str
    coords: np.ndarray  # (n, 2)
    indices: np.ndarray  # rows of the input that were mapped
    silhouette_2d: float | None
    png: Path | None


def silhouette(features: np.ndarray, labels: Sequence[LabelValue], metric: str = "cosine") -> float | None:
    """Silhouette of the label partition; None when it is undefined (one value, or all distinct)."""
    codes, _ = encode_labels(labels)
    keep = codes >= 0
    values = np.unique(codes[keep])
    if values.size < 2 or values.size >= int(keep.sum()):
        return None
    return float(silhouette_score(np.asarray(features)[keep], codes[keep], metric=metric))


def subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def project_2d(features: np.ndarray, method: MapMethod, seed: int = 0) -> np.ndarray:
    """UMAP (cosine) or t-SNE (cosine, PCA init) coordinates of L2-normalised features."""
    normalised = l2_normalise(features)
    n = normalised.shape[0]
    if n < 5:
        raise ContractError(f"need at least 5 points for a 2-D map, got {n}")
    if method == "umap":
        import umap  # slow import (numba): only when a UMAP map is asked for

        reducer = umap.UMAP(n_neighbors=min(15, n - 1), metric="cosine", random_state=seed, n_jobs=1)
        with threadpool_limits(limits=1):
            return np.asarray(reducer.fit_transform(normalised), dtype=np.float32)
    if method == "tsne":
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
        tsne = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed)
        with threadpool_limits(limits=1):  # OpenMP/BLAS threads: 100x slower on a busy 2-core host
            return np.asarray(tsne.fit_transform(normalised), dtype=np.float32)
    raise ConfigError(f"unknown map method {method!r} (umap or tsne)")


def plot_map(coords: np.ndarray, labels: Sequence[LabelValue], path: Path, title: str) -> Path:
    """Scatter plot coloured by label value; a legend when there are few values."""
    codes, names = encode_labels(labels)
    fig, ax = new_figure((7.0, 6.0))
    cmap = colormap("tab20" if len(names) <= LEGEND_MAX_VALUES else "hsv")
    missing = codes < 0
    if missing.any():
        ax.scatter(coords[missing, 0], coords[missing, 1], s=6, c="lightgrey", label="(none)")
    for code, name in enumerate(names):
        sel = codes == code
        colour = cmap(code % 20 if len(names) <= LEGEND_MAX_VALUES else code / max(1, len(names)))
        ax.scatter(coords[sel, 0], coords[sel, 1], s=8, color=colour, label=name)
    if len(names) <= LEGEND_MAX_VALUES:
        ax.legend(fontsize=7, markerscale=2, loc="best", frameon=False)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)


def embedding_maps(
    features: np.ndarray,
    labels: Sequence[LabelValue],
    out_dir: Path | None,
    *,
    label_name: str = "label",
    methods: Sequence[MapMethod] = ("umap", "tsne"),
    max_points: int = MAX_POINTS_DEFAULT,
    seed: int = 0,
    prefix: str = "map",
) -> tuple[float | None, list[EmbeddingMap]]:
    """Silhouette in embedding space, and one 2-D map (PNG when ``out_dir``) per method."""
    if len(labels) != np.asarray(features).shape[0]:
        raise ContractError(f"{len(labels)} labels for {np.asarray(features).shape[0]} rows")
    rows = subsample(len(labels), max_points, seed)
    feats = l2_normalise(np.asarray(features)[rows])
    sub_labels = [labels[i] for i in rows]
    score = silhouette(feats, sub_labels, "cosine")
    maps = []
    for method in methods:
        coords = project_2d(feats, method, seed)
        png = None
        if out_dir is not None:
            title = f"{method.upper()} of {rows.size} embeddings by {label_name}"
            png = plot_map(coords, sub_labels, Path(out_dir) / f"{prefix}_{method}_{label_name}.png", title)
        maps.append(EmbeddingMap(method, coords, rows, silhouette(coords, sub_labels, "euclidean"), png))
    return score, maps
