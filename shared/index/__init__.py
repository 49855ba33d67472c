"""Vector index and reference-library state of the novelty service.

- :class:`VectorIndex`: cosine kNN over L2-normalised float32 vectors with
  string ids, on FAISS (exact up to a size limit, then IVF or HNSW).
- :class:`IndexSettings`: the index's structure and search parameters.
- :func:`save_snapshot` / :func:`load_snapshot`: atomic on-disk snapshots, safe with
  several writers on one folder, refused when taken from another incarnation of the
  library topic (:class:`TopicState`, :func:`stale_reason`).
- :func:`library_topic`: the library topic of each model (blue/green model switches).
- :class:`LibraryState`: applies library-topic records (last record per key
  wins), tracks provisional entries (bounded) and offsets, answers ``neighbours``.
"""

from __future__ import annotations

from shared.index.arrays import check_vectors
from shared.index.library import (
    PROVISIONAL_ID_PREFIX,
    ApplyOutcome,
    LibraryItem,
    LibraryState,
    provisional_entry_id,
    vector_digest,
)
from shared.index.settings import IndexKind, IndexSettings
from shared.index.snapshot import (
    LoadedSnapshot,
    SnapshotMeta,
    TopicState,
    find_snapshot,
    load_snapshot,
    save_snapshot,
    stale_reason,
)
from shared.index.topics import BASE_LIBRARY_TOPIC, library_topic, model_slug
from shared.index.vector_index import IndexState, SearchResult, VectorIndex

__all__ = [
    "BASE_LIBRARY_TOPIC",
    "PROVISIONAL_ID_PREFIX",
    "ApplyOutcome",
    "IndexKind",
    "IndexSettings",
    "IndexState",
    "LibraryItem",
    "LibraryState",
    "LoadedSnapshot",
    "SearchResult",
    "SnapshotMeta",
    "TopicState",
    "VectorIndex",
    "check_vectors",
    "find_snapshot",
    "library_topic",
    "load_snapshot",
    "model_slug",
    "provisional_entry_id",
    "save_snapshot",
    "stale_reason",
    "vector_digest",
]
