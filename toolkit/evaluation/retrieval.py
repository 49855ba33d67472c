"""Retrieval quality of any feature matrix: precision@k and mAP@R by a label.

Every item is a query against all the others (itself excluded). A neighbour is
relevant when it carries the query's label value. ``R`` is the number of other
items with that value; queries whose value no other item shares are skipped
(they have nothing to retrieve) and counted. Features are compared by cosine
(float features) or by Hamming similarity ``1 - hamming / bits`` (bit vectors,
e.g. perceptual hashes), so the encoder and the pixel and pHash baselines go
through the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from shared.errors import ContractError
from toolkit.calibration.pairs import LabelValue, encode_labels
from toolkit.calibration.similarity import check_matrix, l2_normalise

Metric = Literal["cosine", "hamming"]
KS_DEFAULT = (1, 5, 10)


def comparable_matrix(features: np.ndarray, metric: Metric) -> np.ndarray:
    """Rows whose dot products rank like the metric's similarity.

    Cosine: L2-normalised rows. Hamming on 0/1 bits: ``(2 b - 1) / sqrt(B)``, whose
    dot product is ``1 - 2 hamming / B`` (monotone in ``1 - hamming / B``).
    """
    if metric == "cosine":
        return l2_normalise(features, "features")
    if metric == "hamming":
        bits = check_matrix(features, "bit features")
        if not np.isin(bits, (0.0, 1.0)).all():
            raise ContractError("hamming features must be 0/1 bits")
        return np.ascontiguousarray((2.0 * bits - 1.0) / np.sqrt(bits.shape[1]), dtype=np.float32)
    raise ContractError(f"unknown metric {metric!r} (cosine or hamming)")


def similarity_from_dot(dot: np.ndarray, metric: Metric) -> np.ndarray:
    """The metric's similarity from :func:`comparable_matrix` dot products."""
    return dot if metric == "cosine" else (dot + 1.0) / 2.0


@dataclass(frozen=True)
class RetrievalMetrics:
    label: str
    metric: str
    precision_at: dict[int, float]
    map_at_r: float
    r_precision: float
    n_queries: int
    n_skipped: int
    mean_r: float
    per_query_ap: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("per_query_ap")
        out["precision_at"] = {f"p@{k}": v for k, v in self.precision_at.items()}
        return out


def retrieval_metrics(
    features: np.ndarray,
    labels: Sequence[LabelValue],
    *,
    label_name: str = "label",
    metric: Metric = "cosine",
    ks: Sequence[int] = KS_DEFAULT,
    block_size: int = 512,
) -> RetrievalMetrics:
    """P@k (mean over queries of relevant among the top k) and mAP@R.

    AP@R of a query is ``(1/R) * sum_{i<=R} P(i) * rel(i)`` over its top ``R``
    neighbours: 1 exactly when every item sharing its label outranks every other.
    """
    matrix = comparable_matrix(features, metric)
    codes, _ = encode_labels(labels)
    if codes.size != matrix.shape[0]:
        raise ContractError(f"{codes.size} labels for {matrix.shape[0]} feature rows")
    if not ks or min(ks) < 1:
        raise ContractError(f"ks must be positive, got {list(ks)}")
    labelled = codes >= 0
    r_all = np.zeros(codes.size, dtype=np.int64)
    r_all[labelled] = np.bincount(codes[labelled])[codes[labelled]] - 1
    queries = np.flatnonzero(r_all > 0)
    if queries.size == 0:
        raise ContractError(f"no {label_name} value is shared by two items: nothing to retrieve")
    n = matrix.shape[0]
    depth = min(n - 1, max(max(ks), int(r_all[queries].max())))
    hits_at = {k: np.zeros(queries.size) for k in ks}
    ap = np.zeros(queries.size)
    r_prec = np.zeros(queries.size)
    positions = np.arange(1, depth + 1)
    for start in range(0, queries.size, block_size):
        block_q = queries[start : start + block_size]
        dots = matrix[block_q] @ matrix.T
        dots[np.arange(block_q.size), block_q] = -np.inf
        order = np.argsort(-dots, axis=1, kind="stable")[:, :depth]
        relevant = codes[order] == codes[block_q][:, None]
        for k in ks:
            hits_at[k][start : start + block_q.size] = relevant[:, : min(k, depth)].sum(axis=1) / k
        r = r_all[block_q]
        within_r = positions[None, :] <= r[:, None]
        rel_r = relevant & within_r
        precision_i = np.cumsum(rel_r, axis=1) / positions[None, :]
        ap[start : start + block_q.size] = (precision_i * rel_r).sum(axis=1) / r
        r_prec[start : start + block_q.size] = rel_r.sum(axis=1) / r
    return RetrievalMetrics(
        label=label_name,
        metric=metric,
        precision_at={int(k): float(v.mean()) for k, v in hits_at.items()},
        map_at_r=float(ap.mean()),
        r_precision=float(r_prec.mean()),
        n_queries=int(queries.size),
        n_skipped=int(n - queries.size),
        mean_r=float(r_all[queries].mean()),
        per_query_ap=ap,
    )


def compare_retrieval(
    feature_sets: dict[str, tuple[np.ndarray, Metric]],
    labels: Sequence[LabelValue],
    *,
    label_name: str = "label",
    ks: Sequence[int] = KS_DEFAULT,
) -> dict[str, RetrievalMetrics]:
    """The same retrieval metrics for several feature sets (encoder, pixels, pHash...)."""
    return {
        name: retrieval_metrics(feats, labels, label_name=label_name, metric=metric, ks=ks)
        for name, (feats, metric) in feature_sets.items()
    }
