"""Vector index and reference-library state of the novelty service.

- :class:`VectorIndex`: cosine kNN over L2-normalised float32 vectors with
  string ids, on FAISS (exact up to a size limit, then IVF or HNSW).
- :class:`IndexSettings`: the index's structure and search parameters.
- :func:`save_snapshot` / :func:`load_snapshot`: atomic on-disk snapshots.
- :class:`LibraryState`: applies library-topic records (last record per key
  wins), tracks provisional entries and offsets, answers ``neighbours``.
"""

from __future__ import annotations

from shared.index.arrays import check_vectors
from shared.index.library import ApplyOutcome, LibraryItem, LibraryState
from shared.index.settings import IndexKind, IndexSettings
from shared.index.snapshot import LoadedSnapshot, SnapshotMeta, find_snapshot, load_snapshot, save_snapshot
from shared.index.vector_index import IndexState, SearchResult, VectorIndex

__all__ = [
    "ApplyOutcome",
    "IndexKind",
    "IndexSettings",
    "IndexState",
    "LibraryItem",
    "LibraryState",
    "LoadedSnapshot",
    "SearchResult",
    "SnapshotMeta",
    "VectorIndex",
    "check_vectors",
    "find_snapshot",
    "load_snapshot",
    "save_snapshot",
]
