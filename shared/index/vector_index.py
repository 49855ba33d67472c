"""Cosine k-nearest-neighbour search over L2-normalised vectors with string ids.

:class:`VectorIndex` wraps a FAISS index (see :mod:`shared.index.builders`) and
keeps the mapping between the caller's string ids and FAISS's int64 labels.
Every add draws fresh labels from a counter, so re-adding an id replaces it
(upsert) and two indexes fed the same calls hold the same labels in the same
storage order, hence return the same neighbours, ties included.

When the structure changes:

- ``kind="auto"`` starts exact (flat) and is rebuilt, once, as the approximate
  kind when an add takes it past ``settings.flat_limit`` vectors; an explicit
  ``ivf``/``hnsw`` is rebuilt once it holds ``settings.min_train_size`` vectors.
  The rebuild trains on the exact vectors then held (a seeded sample of
  ``train_sample_size``) and blocks that one ``add`` for the training time.
- An approximate index is never retrained or turned back into a flat one by
  itself (its stored codes may be lossy); call :meth:`VectorIndex.rebuild` with the
  original vectors to retrain, e.g. after the library grew tenfold.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared.errors import ConfigError, ContractError
from shared.index import builders
from shared.index.arrays import as_query_matrix, check_vectors
from shared.index.settings import IndexKind, IndexSettings


@dataclass(frozen=True)
class SearchResult:
    """Nearest neighbours of a batch of queries, best first.

    ``similarities[i, j]`` is the cosine similarity of query ``i`` to ``ids[i][j]``
    (exact for ``flat``; from 8-bit codes, or a PCA projection, for approximate
    kinds); a row holds fewer than ``k`` ids when the index (or, for IVF, the
    probed cells) held fewer vectors, and ``similarities`` is ``-inf`` past them.
    """

    similarities: NDArray[np.float32]
    ids: tuple[tuple[str, ...], ...]

    @property
    def k(self) -> int:
        return int(self.similarities.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def hits(self, row: int) -> list[tuple[str, float]]:
        """(id, similarity) pairs of query ``row``, best first."""
        return [(entry_id, float(self.similarities[row, j])) for j, entry_id in enumerate(self.ids[row])]


@dataclass(frozen=True)
class IndexState:
    """The id mapping a snapshot stores beside the FAISS file."""

    labels: list[int]
    ids: list[str]
    next_label: int
    masked_labels: list[int]


class VectorIndex:
    """Upsert/remove/search of unit vectors by string id (cosine = inner product)."""

    def __init__(self, dim: int, settings: IndexSettings | None = None) -> None:
        if dim <= 0:
            raise ConfigError(f"index dimension must be positive, got {dim}")
        self._dim = dim
        self._settings = settings or IndexSettings()
        self._index: Any = builders.new_flat(dim)
        self._kind: IndexKind = "flat"
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._next_label = 0
        self._masked: set[int] = set()
        self._mask_params: tuple[Any, list[Any]] | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def settings(self) -> IndexSettings:
        return self._settings

    @property
    def kind(self) -> IndexKind:
        """The structure now in use (``auto`` resolves to ``flat`` until the switch)."""
        return self._kind

    @property
    def size(self) -> int:
        """Number of live ids."""
        return len(self._label_of)

    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._label_of

    def ids(self) -> list[str]:
        """Live ids, oldest add first."""
        return [self._id_of[label] for label in sorted(self._id_of)]

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (for persistence; do not mutate)."""
        return self._index

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        vectors: NDArray[np.float32],
        settings: IndexSettings | None = None,
        *,
        expected_size: int | None = None,
    ) -> VectorIndex:
        """Bulk-load distinct ``ids``: one training on (a sample of) all ``vectors``, then one add.

        The kind is the one :meth:`add` would reach at this size. ``vectors`` is
        only read (a view of another index's storage is fine).
        """
        settings = settings or IndexSettings()
        if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
            raise ContractError("vectors must be a 2-D numpy array", reason="vector_dim")
        index = cls(int(vectors.shape[1]), settings)
        check_vectors(vectors, index.dim, norm_tolerance=settings.norm_tolerance)
        _check_ids(ids, len(vectors))
        if len(set(ids)) != len(ids):
            raise ContractError("build needs distinct ids", reason="vector_ids")
        index._label_of = {entry_id: label for label, entry_id in enumerate(ids)}
        index._id_of = dict(enumerate(ids))
        index._next_label = len(ids)
        switch_size = settings.switch_size()
        approximate = switch_size is not None and len(ids) >= switch_size
        index._rebuild(vectors, settings.target_kind() if approximate else "flat", expected_size)
        return index

    # -- mutation -----------------------------------------------------------------------------

    def add(self, ids: Sequence[str], vectors: NDArray[np.float32]) -> None:
        """Insert or replace ``ids`` with the rows of ``vectors`` (float32, (n, dim), unit norm).

        Within one call a repeated id keeps its last row. Contracts are checked
        before anything changes: a refused call leaves the index as it was.
        """
        check_vectors(vectors, self._dim, norm_tolerance=self._settings.norm_tolerance)
        _check_ids(ids, len(vectors))
        last_row = {entry_id: row for row, entry_id in enumerate(ids)}
        if not last_row:
            return
        rows = np.fromiter(last_row.values(), dtype=np.int64, count=len(last_row))
        kept_ids = list(last_row)
        if len(rows) != len(vectors):
            vectors = np.ascontiguousarray(vectors[rows])
        self._drop([entry_id for entry_id in kept_ids if entry_id in self._label_of])
        labels = np.arange(self._next_label, self._next_label + len(kept_ids), dtype=np.int64)
        builders.add_with_labels(self._index, vectors, labels, self._settings.seed)
        self._next_label += len(kept_ids)
        for entry_id, label in zip(kept_ids, labels.tolist(), strict=True):
            self._label_of[entry_id] = label
            self._id_of[label] = entry_id
        switch_size = self._settings.switch_size()
        if self._kind == "flat" and switch_size is not None and self.size >= switch_size:
            self.rebuild()

    def reserve(self, n_vectors: int) -> None:
        """Pre-size exact storage for a bulk load of ``n_vectors`` (no effect on other kinds)."""
        if self._kind == "flat":
            builders.reserve_flat(self._index, n_vectors)

    def remove(self, ids: Iterable[str]) -> int:
        """Remove ``ids``; unknown ids are ignored. Returns how many were present."""
        present = list(dict.fromkeys(entry_id for entry_id in ids if entry_id in self._label_of))
        self._drop(present)
        return len(present)

    def _drop(self, ids: list[str]) -> None:
        if not ids:
            return
        labels = [self._label_of.pop(entry_id) for entry_id in ids]
        for label in labels:
            del self._id_of[label]
        if self._kind != "hnsw":
            builders.remove_labels(self._index, np.asarray(labels, dtype=np.int64))
            return
        self._masked.update(labels)
        self._mask_params = None
        if len(self._masked) > self._settings.hnsw_compact_fraction * self._index.ntotal:
            builders.compact_hnsw(self._index, np.fromiter(self._masked, dtype=np.int64), self._settings.seed)
            self._masked.clear()

    def rebuild(
        self,
        vectors: NDArray[np.float32] | None = None,
        *,
        kind: IndexKind | None = None,
        expected_size: int | None = None,
    ) -> None:
        """Rebuild as ``kind`` (default: the settings' target kind), keeping ids and labels.

        ``vectors`` are the live vectors in :meth:`ids` order; they may be omitted
        while the index is flat (its stored vectors are exact). Approximate kinds
        train on a seeded sample of them, sized for ``expected_size`` vectors
        (default: the current size).
        """
        if vectors is None:
            if self._kind != "flat":
                raise ConfigError("rebuilding an approximate index needs the original vectors")
            # Flat storage is in label order (labels only grow; removal keeps order):
            # a zero-copy view of the old index, alive until it is replaced below.
            vectors = builders.flat_contents(self._index, self._dim)[1]
        else:
            check_vectors(vectors, self._dim)
        self._rebuild(vectors, kind or self._settings.target_kind(), expected_size)

    def _rebuild(self, vectors: NDArray[np.float32], kind: IndexKind, expected_size: int | None) -> None:
        labels = np.asarray(sorted(self._id_of), dtype=np.int64)
        if len(vectors) != len(labels):
            raise ContractError(
                f"rebuild got {len(vectors)} vectors for {len(labels)} ids", reason="vector_ids"
            )
        if kind == "flat":
            index = builders.new_flat(self._dim)
        else:
            if len(vectors) == 0:
                raise ConfigError(f"an empty index cannot be trained as {kind}")
            sample = builders.training_sample(vectors, self._settings.train_sample_size, self._settings.seed)
            index = builders.build_approximate(kind, sample, self._settings, expected_size or len(vectors))
        builders.add_with_labels(index, vectors, labels, self._settings.seed)
        self._index = index
        self._kind = kind
        self._masked.clear()
        self._mask_params = None

    # -- search -------------------------------------------------------------------------------

    def search(self, queries: NDArray[np.float32], k: int) -> SearchResult:
        """The ``k`` most similar live vectors for each query row (float32 (n, dim) or (dim,))."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = as_query_matrix(queries, self._dim, norm_tolerance=self._settings.norm_tolerance)
        n_queries = len(queries)
        similarities = np.full((n_queries, k), -np.inf, dtype=np.float32)
        if self.size == 0 or n_queries == 0:
            return SearchResult(similarities, tuple(() for _ in range(n_queries)))
        k_search = min(k, int(self._index.ntotal))
        params = self._search_params()
        with builders.threads_at_most(n_queries):
            scores, labels = self._index.search(queries, k_search, params=params)
        rows: list[tuple[str, ...]] = []
        for i in range(n_queries):
            found = labels[i] >= 0
            count = int(found.sum())
            similarities[i, :count] = scores[i][found]
            rows.append(tuple(self._id_of[label] for label in labels[i][found].tolist()))
        return SearchResult(similarities, tuple(rows))

    def _search_params(self) -> Any:
        if not self._masked:
            return None
        if self._mask_params is None:
            masked = np.fromiter(sorted(self._masked), dtype=np.int64)
            self._mask_params = builders.hnsw_mask_params(self._index, masked, self._settings.ef_search)
        return self._mask_params[0]

    # -- persistence --------------------------------------------------------------------------

    def state(self) -> IndexState:
        """The id mapping and label counter (with :attr:`faiss_index`, all a snapshot needs)."""
        labels = sorted(self._id_of)
        return IndexState(
            labels=labels,
            ids=[self._id_of[label] for label in labels],
            next_label=self._next_label,
            masked_labels=sorted(self._masked),
        )

    @classmethod
    def from_state(cls, faiss_index: Any, state: IndexState, settings: IndexSettings) -> VectorIndex:
        """An index over a FAISS index read from disk; checks the mapping fits it."""
        index = cls(int(faiss_index.d), settings)
        if len(state.labels) != len(state.ids) or len(set(state.ids)) != len(state.ids):
            raise ConfigError("snapshot id mapping is inconsistent (labels/ids differ in length or repeat)")
        stored = len(state.labels) + len(state.masked_labels)
        if int(faiss_index.ntotal) != stored:
            raise ConfigError(f"snapshot index holds {faiss_index.ntotal} vectors but its mapping {stored}")
        if state.labels and max(state.labels) >= state.next_label:
            raise ConfigError("snapshot label counter is behind its labels")
        index._index = faiss_index
        index._kind = builders.kind_of(faiss_index)
        index._label_of = dict(zip(state.ids, state.labels, strict=True))
        index._id_of = dict(zip(state.labels, state.ids, strict=True))
        index._next_label = state.next_label
        index._masked = set(state.masked_labels)
        builders.apply_search_settings(faiss_index, settings)
        return index


def _check_ids(ids: Sequence[str], n_vectors: int) -> None:
    if len(ids) != n_vectors:
        raise ContractError(f"{len(ids)} ids for {n_vectors} vectors", reason="vector_ids")
    for entry_id in ids:
        if not isinstance(entry_id, str) or not entry_id:
            raise ContractError(f"ids must be non-empty strings, got {entry_id!r}", reason="vector_ids")
