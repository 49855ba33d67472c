"""FAISS structures behind :class:`~shared.index.vector_index.VectorIndex`.

Layouts (labels are int64, assigned by the caller):

- ``flat``: ``IndexIDMap2(IndexFlatIP(d))``, exact cosine of unit vectors.
- ``ivf``: ``[IndexPreTransform(P)] IndexIVF{Flat,ScalarQuantizer}(IndexFlatIP)`` with
  a hashtable direct map, so removal by label is cheap.
- ``hnsw``: ``[IndexPreTransform(P)] IndexIDMap2(IndexHNSW{Flat,SQ})``. HNSW cannot
  remove: removed labels are masked at search and the graph is rebuilt later.

``P`` is an *uncentred* PCA (eigenvectors of the second-moment matrix, no mean
subtraction): centring would change inner products and so the ranking.

Everything here is deterministic for a given input order, so replicas that
replay the same records build identical indexes: training samples are drawn
with a fixed seed, k-means is seeded, and HNSW levels come from a hash of each
label (not FAISS's generator, whose state a snapshot does not keep) with
graph insertion on one thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

from shared.index.settings import IndexKind, IndexSettings

Labels = NDArray[np.int64]
_CHUNK_ROWS = 32_768


def new_flat(dim: int) -> Any:
    """An empty exact inner-product index with caller-chosen labels."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def layers(index: Any) -> tuple[Any, Any, Any]:
    """(pre-transform or None, IDMap2 layer or None, innermost index), downcast."""
    index = faiss.downcast_index(index)
    pretransform: Any = None
    if isinstance(index, faiss.IndexPreTransform):
        pretransform = index
        index = faiss.downcast_index(index.index)
    idmap: Any = None
    if isinstance(index, faiss.IndexIDMap2):
        idmap = index
        index = faiss.downcast_index(index.index)
    return pretransform, idmap, index


def kind_of(index: Any) -> IndexKind:
    core = layers(index)[2]
    if isinstance(core, faiss.IndexFlat):
        return "flat"
    if isinstance(core, faiss.IndexIVF):
        return "ivf"
    if isinstance(core, faiss.IndexHNSW):
        return "hnsw"
    raise TypeError(f"unsupported FAISS index {type(core).__name__}")


def flat_contents(index: Any, dim: int) -> tuple[Labels, NDArray[np.float32]]:
    """Labels and a zero-copy view of the vectors of a flat index, in storage order.

    The view is valid only while ``index`` is alive and unchanged.
    """
    _, idmap, core = layers(index)
    labels = faiss.vector_to_array(idmap.id_map).astype(np.int64)
    if core.ntotal == 0:
        return labels, np.zeros((0, dim), dtype=np.float32)
    vectors = faiss.rev_swig_ptr(core.get_xb(), core.ntotal * dim).reshape(core.ntotal, dim)
    return labels, vectors


def reserve_flat(index: Any, n_vectors: int) -> None:
    """Pre-size a flat index's storage for ``n_vectors``, so growing to it never reallocates.

    FAISS grows storage like a std::vector: a reallocation briefly holds the old
    and the new buffer (≈ 2x at 1M 2048-d vectors). Resizing up then back down
    keeps the capacity (the reserved pages are touched now rather than later).
    """
    core = layers(index)[2]
    if not isinstance(core, faiss.IndexFlat) or n_vectors <= core.ntotal:
        return
    used_bytes = core.codes.size()
    core.codes.resize(n_vectors * core.code_size)
    core.codes.resize(used_bytes)


def training_sample(vectors: NDArray[np.float32], size: int, seed: int) -> NDArray[np.float32]:
    """At most ``size`` rows, drawn without replacement in a seeded, sorted order."""
    if len(vectors) <= size:
        return np.ascontiguousarray(vectors)
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=size, replace=False))
    return np.ascontiguousarray(vectors[rows])


def uncentred_pca(sample: NDArray[np.float32], out_dim: int) -> Any:
    """A FAISS linear map onto the top ``out_dim`` eigenvectors of E[x xᵀ].

    Rows are orthonormal, so inner products in the projected space are those of
    the vectors' components in the kept subspace (never larger than the originals).
    """
    gram = (sample.T @ sample).astype(np.float64) / max(len(sample), 1)
    _, eigenvectors = np.linalg.eigh(gram)
    top = eigenvectors[:, ::-1][:, :out_dim]
    # Fix each eigenvector's sign so the same sample always gives the same map.
    signs = np.sign(top[np.abs(top).argmax(axis=0), np.arange(out_dim)])
    matrix = np.ascontiguousarray((top * signs).T, dtype=np.float32)
    transform = faiss.LinearTransform(sample.shape[1], out_dim, False)
    faiss.copy_array_to_vector(matrix.ravel(), transform.A)
    transform.is_trained = True
    return transform


def choose_nlist(settings: IndexSettings, n_train: int, expected_size: int) -> int:
    """IVF cells: the setting, or ≈ 4·sqrt(expected size); at most n_train/39 (k-means needs ≥ 39 a cell)."""
    wanted = settings.nlist or round(4 * math.sqrt(max(expected_size, 1)))
    return max(1, min(wanted, n_train // 39))


def build_approximate(
    kind: IndexKind, sample: NDArray[np.float32], settings: IndexSettings, expected_size: int
) -> Any:
    """A trained, empty approximate index of ``kind`` for vectors like ``sample``."""
    dim = sample.shape[1]
    transform: Any = None
    core: Any
    outer: Any
    graph: Any
    inner_dim = dim
    train_x = sample
    if settings.pca_dim is not None and settings.pca_dim < dim:
        transform = uncentred_pca(sample, settings.pca_dim)
        inner_dim = settings.pca_dim
        train_x = transform.apply(sample)
    if kind == "ivf":
        quantizer = faiss.IndexFlatIP(inner_dim)
        nlist = choose_nlist(settings, len(train_x), expected_size)
        if settings.sq8:
            core = faiss.IndexIVFScalarQuantizer(
                quantizer, inner_dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            )
        else:
            core = faiss.IndexIVFFlat(quantizer, inner_dim, nlist, faiss.METRIC_INNER_PRODUCT)
        core.cp.seed = settings.seed
        core.cp.niter = settings.kmeans_iterations
        core.train(train_x)
        # DirectMap is missing from faiss's bundled stubs.
        core.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        outer = core
    elif kind == "hnsw":
        if settings.sq8:
            qtype: Any = faiss.ScalarQuantizer.QT_8bit  # the stubs type it as a quantizer, not an enum
            graph = faiss.IndexHNSWSQ(inner_dim, qtype, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.train(train_x)
        else:
            graph = faiss.IndexHNSWFlat(inner_dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = settings.ef_construction
        outer = faiss.IndexIDMap2(graph)
    else:
        raise ValueError(f"{kind!r} is not an approximate kind")
    index = faiss.IndexPreTransform(transform, outer) if transform is not None else outer
    apply_search_settings(index, settings)
    return index


def apply_search_settings(index: Any, settings: IndexSettings) -> None:
    """Set search-time parameters (not stored in FAISS files, so applied on every load)."""
    core = layers(index)[2]
    if isinstance(core, faiss.IndexIVF):
        core.nprobe = settings.nprobe
    elif isinstance(core, faiss.IndexHNSW):
        core.hnsw.efSearch = settings.ef_search


@contextmanager
def threads_at_most(n_threads: int) -> Iterator[None]:
    """Run FAISS on at most ``n_threads`` OpenMP threads (this thread's setting only).

    FAISS parallelises a search over its queries: a team larger than the batch only
    spins at the barrier. On a busy 2-core host a one-query flat search measured
    1.8-6 ms of wall time with two threads against 0.13-0.17 ms with one.
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, min(before, n_threads)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run FAISS on one OpenMP thread (HNSW insertion order must not depend on timing)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _uniform_from_labels(labels: Labels, seed: int) -> NDArray[np.float64]:
    """A uniform [0, 1) number per label (splitmix64), independent of batching."""
    with np.errstate(over="ignore"):
        z = labels.astype(np.uint64) + np.uint64(seed % 2**64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def add_with_labels(index: Any, vectors: NDArray[np.float32], labels: Labels, seed: int) -> None:
    """Add vectors under ``labels``, deterministically for every kind, in bounded chunks."""
    core = layers(index)[2]
    is_hnsw = isinstance(core, faiss.IndexHNSW)
    for start in range(0, len(vectors), _CHUNK_ROWS):
        chunk = np.ascontiguousarray(vectors[start : start + _CHUNK_ROWS])
        chunk_labels = np.ascontiguousarray(labels[start : start + _CHUNK_ROWS])
        if not is_hnsw:
            index.add_with_ids(chunk, chunk_labels)
            continue
        probas = np.cumsum(faiss.vector_to_array(core.hnsw.assign_probas))
        levels = np.searchsorted(probas, _uniform_from_labels(chunk_labels, seed), side="right")
        for level in np.minimum(levels, len(probas) - 1):
            core.hnsw.levels.push_back(int(level) + 1)
        with one_thread():
            index.add_with_ids(chunk, chunk_labels)


def remove_labels(index: Any, labels: Labels) -> int:
    """Remove ``labels`` from a flat or IVF index; returns how many were stored."""
    if len(labels) == 0:
        return 0
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    core = layers(index)[2]
    selector: Any
    # The IVF hashtable direct map only accepts an explicit array selector; IDMap2
    # tests membership per stored vector, where a hashed batch selector is O(1).
    if isinstance(core, faiss.IndexIVF):
        selector = faiss.IDSelectorArray(len(labels), faiss.swig_ptr(labels))
    else:
        selector = faiss.IDSelectorBatch(len(labels), faiss.swig_ptr(labels))
    return int(index.remove_ids(selector))


def compact_hnsw(index: Any, masked: Labels, seed: int) -> None:
    """Rebuild an HNSW graph in place without the ``masked`` labels.

    The stored (already projected) vectors are re-inserted, so no retraining and
    no loss beyond what the stored codes already had.
    """
    pretransform, idmap, core = layers(index)
    labels = faiss.vector_to_array(idmap.id_map).astype(np.int64)
    stored = core.storage.reconstruct_n(0, core.ntotal)
    keep = ~np.isin(labels, masked)
    idmap.reset()
    add_with_labels(idmap, np.ascontiguousarray(stored[keep]), labels[keep], seed)
    if pretransform is not None:  # vectors went in below it, so it did not count them
        pretransform.ntotal = idmap.ntotal


def hnsw_mask_params(index: Any, masked: Labels, ef_search: int) -> tuple[Any, list[Any]]:
    """Search parameters excluding ``masked`` labels, and the objects they point to.

    FAISS parameter objects hold raw pointers: keep the returned list alive as
    long as the parameters are used.
    """
    pretransform = layers(index)[0]
    masked = np.ascontiguousarray(masked, dtype=np.int64)
    batch = faiss.IDSelectorBatch(len(masked), faiss.swig_ptr(masked))
    selector = faiss.IDSelectorNot(batch)
    hnsw_params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from the stubs
    hnsw_params.efSearch = ef_search
    hnsw_params.sel = selector
    keep_alive: list[Any] = [masked, batch, selector, hnsw_params]
    if pretransform is None:
        return hnsw_params, keep_alive
    params = faiss.SearchParametersPreTransform()
    params.index_params = hnsw_params
    return params, keep_alive
