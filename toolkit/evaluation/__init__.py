"""Evaluation of embeddings: retrieval, novelty, cluster maps and transfer, with baselines.

Public surface::

    retrieval_metrics(features, labels, metric="cosine"|"hamming", ks=(1, 5, 10)) -> RetrievalMetrics
    novelty_metrics(known_scores, novel_scores, threshold=None) -> NoveltyMetrics
    evaluate_novelty(library, known_queries, novel_queries, threshold=None) -> (metrics, known, novel)
    embedding_maps(features, labels, out_dir, methods=("umap", "tsne")) -> (silhouette, [EmbeddingMap])
    transfer_score(features, target, "regression"|"classification", groups=None) -> TransferResult
    pixel_features(images, size=32) -> (N, C*size*size) unit vectors
    phash_features(images) -> (N, 64*C) 0/1 bits;  hamming_similarity(a, b)

Deliberately light at import: UMAP is imported only when a UMAP map is drawn.
"""

from __future__ import annotations

from toolkit.evaluation.baselines import hamming_similarity, phash_features, pixel_features
from toolkit.evaluation.maps import EmbeddingMap, embedding_maps, silhouette
from toolkit.evaluation.novelty import (
    NoveltyMetrics,
    evaluate_novelty,
    feature_novelty_scores,
    novelty_metrics,
)
from toolkit.evaluation.retrieval import RetrievalMetrics, compare_retrieval, retrieval_metrics
from toolkit.evaluation.transfer import TransferResult, compare_transfer, transfer_score

__all__ = [
    "EmbeddingMap",
    "NoveltyMetrics",
    "RetrievalMetrics",
    "TransferResult",
    "compare_retrieval",
    "compare_transfer",
    "embedding_maps",
    "evaluate_novelty",
    "feature_novelty_scores",
    "hamming_similarity",
    "novelty_metrics",
    "phash_features",
    "pixel_features",
    "retrieval_metrics",
    "silhouette",
    "transfer_score",
]
