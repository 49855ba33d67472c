"""How a :class:`~shared.index.vector_index.VectorIndex` is built and searched.

The defaults suit the novelty service's 2048-d embeddings: exact inner product
(FAISS ``IndexIDMap2(IndexFlatIP)``) while the library is small, and, past
``flat_limit`` vectors, IVF with 8-bit scalar-quantised codes of the full
vectors (a quarter of the memory; similarities stay within about 1e-3 of the
exact ones, so thresholds calibrated on the exact index still hold). A PCA
projection (``pca_dim``) is faster and smaller again but lowers every
similarity by the energy outside the kept subspace, which inflates novelty
scores: enable it only with thresholds calibrated on that index.
``bench/faiss_bench.py`` measures these trade-offs.
Structural fields (``kind``, ``approximate_kind``, ``pca_dim``, ``sq8``,
``nlist``, ``hnsw_m``, ``ef_construction``, the training sample and ``seed``)
take effect when an approximate index is built; ``nprobe`` and ``ef_search``
are applied again on every restore, so they can be tuned without a rebuild.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

IndexKind = Literal["flat", "ivf", "hnsw"]
"""The structure an index actually has (``auto`` is only a request)."""

RequestedKind = Literal["auto", "flat", "ivf", "hnsw"]


class IndexSettings(BaseModel):
    """Index structure and search parameters (immutable; one per service)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: RequestedKind = "auto"
    """``auto``: exact up to ``flat_limit`` vectors, then ``approximate_kind``.
    ``flat``: always exact. ``ivf``/``hnsw``: exact until ``min_train_size``
    vectors are present (an approximate index needs training data), then that kind."""
    flat_limit: int = Field(default=100_000, ge=1)
    approximate_kind: Literal["ivf", "hnsw"] = "ivf"
    min_train_size: int = Field(default=10_000, ge=1)

    pca_dim: int | None = Field(default=None, ge=1)
    """Project to this many dimensions (uncentred PCA) before the approximate
    index; ``None``, or a value not below the vector dimension, disables it."""
    sq8: bool = True
    """Store 8-bit scalar-quantised codes instead of float32 in the approximate index."""

    nlist: int | None = Field(default=None, ge=1)
    """IVF cells; ``None`` chooses about 4·sqrt(expected size), bounded by the training sample."""
    nprobe: int = Field(default=16, ge=1)
    kmeans_iterations: int = Field(default=10, ge=1)

    hnsw_m: int = Field(default=32, ge=4)
    ef_construction: int = Field(default=80, ge=8)
    ef_search: int = Field(default=128, ge=1)

    train_sample_size: int = Field(default=65_536, ge=64)
    """Vectors drawn (deterministically, with ``seed``) to train PCA, IVF and SQ8."""
    seed: int = 1234

    norm_tolerance: float | None = Field(default=1e-3, gt=0)
    """Refuse vectors whose L2 norm is further than this from 1; ``None`` skips the check."""

    hnsw_compact_fraction: float = Field(default=0.25, gt=0, le=1)
    """HNSW cannot delete in place: removed vectors are masked, and the graph is
    rebuilt once masked vectors exceed this fraction of those stored."""

    def target_kind(self) -> IndexKind:
        """The structure this index ends up with once large enough."""
        if self.kind == "auto":
            return self.approximate_kind
        return self.kind

    def switch_size(self) -> int | None:
        """Size at which an exact index is rebuilt as approximate (``None``: never)."""
        if self.kind == "flat":
            return None
        if self.kind == "auto":
            return self.flat_limit + 1
        return self.min_train_size
