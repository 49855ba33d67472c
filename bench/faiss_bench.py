"""Novelty index benchmark: FAISS exact and approximate kinds against numpy brute force.

Prints, per library size: build time (training included), bytes per vector
(FAISS file and resident-memory growth), queries/s batched and one at a time,
recall@k against exact search, how much lower the best similarity comes out
than the exact one (``sim gap``: what a novelty score computed from it is
inflated by), and snapshot write/restore times. FAISS and
BLAS both run on one thread, so the figures are per core. Nothing is asserted.

Data (unless ``--vectors`` points at real embeddings): ``--clusters`` Gaussian
clusters inside a random ``--intrinsic-dim``-dimensional subspace of
``--dim``, with a power-law spectrum (scale of latent axis j ∝ j^-1/2, as
embedding spectra decay), cluster spread ``--spread``, plus isotropic noise
``--noise`` over all dimensions, L2-normalised. Queries are fresh draws from
the same distribution. Recall of the PCA-projected kinds depends on this
spectrum: re-measure on your own embeddings with ``--vectors``.

Memory: vectors are generated in chunks straight into the flat index (one
copy); numpy brute force and the approximate builds read that index's storage
without copying; the flat snapshot is restored after the in-memory flat index
is freed. Peak ≈ one flat copy + one approximate index + a chunk.

Examples::

    python bench/faiss_bench.py --sizes 10000 --dim 256 --queries 200     # quick
    python bench/faiss_bench.py --sizes 100000 1000000                    # 2048-d
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.index import IndexSettings, VectorIndex, load_snapshot, save_snapshot
from shared.index.builders import apply_search_settings, flat_contents, layers

Matrix = NDArray[np.float32]
CHUNK_ROWS = 32_768
REPEATS = 2


# -- data --------------------------------------------------------------------------------------


class ClusteredVectors:
    """Deterministic chunks of clustered unit vectors (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        rng = np.random.default_rng(args.seed)
        rank = min(args.intrinsic_dim, args.dim)
        gaussian = rng.standard_normal((args.dim, rank)).astype(np.float32)
        self.basis = np.ascontiguousarray(np.linalg.qr(gaussian)[0].T)  # (rank, dim), orthonormal rows
        scales = (np.arange(1, rank + 1, dtype=np.float32)) ** -0.5
        self.scales = scales / np.linalg.norm(scales)
        self.centres = rng.standard_normal((args.clusters, rank)).astype(np.float32) * self.scales
        self.dim, self.rank, self.spread, self.noise, self.seed = (
            args.dim, rank, args.spread, args.noise, args.seed
        )

    def rows(self, start: int, count: int, stream: int) -> Matrix:
        rng = np.random.default_rng([self.seed, stream, start])
        which = rng.integers(0, len(self.centres), size=count)
        variation = rng.standard_normal((count, self.rank), np.float32) * self.scales
        vectors = (self.centres[which] + np.float32(self.spread) * variation) @ self.basis
        noise = rng.standard_normal((count, self.dim), np.float32)
        vectors += noise * np.float32(self.noise / np.sqrt(self.dim))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    def chunks(self, n: int, stream: int = 0) -> Iterator[tuple[int, Matrix]]:
        for start in range(0, n, CHUNK_ROWS):
            yield start, self.rows(start, min(CHUNK_ROWS, n - start), stream)

    def queries(self, n: int) -> Matrix:
        return self.rows(0, n, stream=1)


class NpyVectors:
    """Rows of a float32 .npy file (memory-mapped): the first n index, the last rows query."""

    def __init__(self, path: Path) -> None:
        self.array = np.load(path, mmap_mode="r", allow_pickle=False)
        if self.array.dtype != np.float32 or self.array.ndim != 2:
            raise SystemExit(f"{path}: need float32 (n, dim), got {self.array.dtype} {self.array.shape}")

    @staticmethod
    def _unit(rows: Any) -> Matrix:
        rows = np.array(rows, dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def chunks(self, n: int) -> Iterator[tuple[int, Matrix]]:
        for start in range(0, n, CHUNK_ROWS):
            yield start, self._unit(self.array[start : min(n, start + CHUNK_ROWS)])

    def queries(self, n: int) -> Matrix:
        """The last ``n`` rows: keep sizes + queries within the file so they are not indexed too."""
        return self._unit(self.array[-n:])


# -- measuring ---------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(work: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = work()
    return value, time.perf_counter() - start


IdRows = list[list[str]] | tuple[tuple[str, ...], ...]


def recall_at_k(found: IdRows, truth: IdRows, k: int) -> float:
    hits = sum(len(set(row[:k]) & set(exact[:k])) for row, exact in zip(found, truth, strict=False))
    return hits / (k * len(truth))


def numpy_topk(stored: Matrix, queries: Matrix, k: int, batch: int = 32) -> NDArray[np.int64]:
    """Brute force: float32 matmul, argpartition, then sort the k (row numbers)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch):
        scores = queries[start : start + batch] @ stored.T
        top = np.argpartition(scores, -k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + batch] = np.take_along_axis(top, order, axis=1)
    return out


@dataclass
class Row:
    size: int
    name: str
    build_s: float | None = None
    file_bytes_per_vec: float | None = None
    rss_bytes_per_vec: float | None = None
    qps_batched: float | None = None
    qps_single: float | None = None
    recall: float | None = None
    sim_gap: float | None = None
    snap_write_s: float | None = None
    snap_read_s: float | None = None
    notes: list[str] = field(default_factory=list)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value + 0.0, spec).replace("-0.0000", "0.0000")


def print_table(rows: list[Row], k: int) -> None:
    head = (
        f"{'n':>9} {'index':<34} {'build s':>8} {'file B/vec':>10} {'RSS B/vec':>9} "
        f"{'q/s batch':>9} {'q/s single':>10} {f'recall@{k}':>9} {'sim gap':>7} {'snap w s':>8} "
        f"{'snap r s':>8}  notes"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.size:>9} {r.name:<34} {fmt(r.build_s, '.1f'):>8} {fmt(r.file_bytes_per_vec, '.0f'):>10} "
            f"{fmt(r.rss_bytes_per_vec, '.0f'):>9} {fmt(r.qps_batched, '.1f'):>9} "
            f"{fmt(r.qps_single, '.1f'):>10} {fmt(r.recall, '.3f'):>9} {fmt(r.sim_gap, '.4f'):>7} "
            f"{fmt(r.snap_write_s, '.2f'):>8} "
            f"{fmt(r.snap_read_s, '.2f'):>8}  {'; '.join(r.notes)}"
        )
    sys.stdout.flush()


def parse_spec(spec: str) -> IndexSettings:
    """``auto`` (the service default) or ``ivf|hnsw[:pca=N][:sq8|:f32][:nlist=N][:m=N]``."""
    if spec == "auto":
        return IndexSettings(kind=IndexSettings().target_kind(), min_train_size=1)
    kind, *options = spec.split(":")
    fields: dict[str, Any] = {"kind": kind, "min_train_size": 1, "pca_dim": None, "sq8": False}
    for option in options:
        key, _, value = option.partition("=")
        if key == "pca":
            fields["pca_dim"] = int(value)
        elif key in {"sq8", "f32"}:
            fields["sq8"] = key == "sq8"
        elif key == "nlist":
            fields["nlist"] = int(value)
        elif key == "m":
            fields["hnsw_m"] = int(value)
        else:
            raise SystemExit(f"unknown option {option!r} in --approx {spec!r}")
    return IndexSettings(**fields)


def describe(index: VectorIndex) -> str:
    pretransform, _, core = layers(index.faiss_index)
    parts: list[str] = [index.kind]
    if pretransform is not None:
        parts.append(f"pca{index.settings.pca_dim}")
    parts.append("sq8" if index.settings.sq8 else "f32")
    if isinstance(core, faiss.IndexIVF):
        parts.append(f"nlist{core.nlist}")
    if isinstance(core, faiss.IndexHNSW):
        parts.append(f"M{index.settings.hnsw_m}")
    return "-".join(parts)


def write_snapshot(index: VectorIndex, folder: Path) -> tuple[float, int]:
    """Seconds to write a snapshot, and the size of its FAISS file."""
    path, write_s = timed(lambda: save_snapshot(folder, index, model_version="bench"))
    return write_s, (path / "index.faiss").stat().st_size


def read_snapshot(folder: Path, queries: Matrix, k: int, expected: IdRows) -> tuple[float, bool]:
    """Seconds to restore a snapshot, and whether the restored index answers as before."""
    loaded, read_s = timed(lambda: load_snapshot(folder, expected_model_version="bench"))
    same = loaded.index.search(queries, k).ids == expected
    del loaded
    shutil.rmtree(folder, ignore_errors=True)
    return read_s, same


def search_rates(index: VectorIndex, queries: Matrix, k: int, single: int) -> tuple[Any, float, float | None]:
    """Batched q/s (best of REPEATS: other work shares the machine) and one-at-a-time q/s."""
    result, batch_s = timed(lambda: index.search(queries, k))
    for _ in range(REPEATS - 1):
        batch_s = min(batch_s, timed(lambda: index.search(queries, k))[1])
    single_qps = None
    if single:
        _, single_s = timed(lambda: [index.search(queries[i], k) for i in range(single)])
        single_qps = single / single_s
    return result, len(queries) / batch_s, single_qps


# -- one library size --------------------------------------------------------------------------


def run_size(n: int, data: ClusteredVectors | NpyVectors, args: argparse.Namespace, work: Path) -> list[Row]:
    rows: list[Row] = []
    k = args.k
    queries = data.queries(args.queries)
    small = n <= args.single_limit
    single = args.single_queries if small else 0

    # Exact FAISS index, filled chunk by chunk (the only full copy of the vectors).
    flat_row = Row(n, "flat  IndexIDMap2(IndexFlatIP)")
    flat = VectorIndex(queries.shape[1], IndexSettings(kind="flat"))
    rss_before = rss_bytes()
    build_s = 0.0  # adding only; generating the vectors is not counted
    for offset, chunk in tqdm_chunks(data.chunks(n), n, f"fill {n}"):
        chunk_ids = [f"v{i}" for i in range(offset, offset + len(chunk))]
        start = time.perf_counter()
        if offset == 0:
            flat.reserve(n)
        flat.add(chunk_ids, chunk)
        build_s += time.perf_counter() - start
    flat_row.build_s = build_s
    flat_row.rss_bytes_per_vec = (rss_bytes() - rss_before) / n

    truth_queries = queries if n <= args.single_limit else queries[: args.exact_queries]
    truth_result, flat_row.qps_batched, flat_row.qps_single = search_rates(flat, truth_queries, k, single)
    truth = [list(row) for row in truth_result.ids]
    flat_row.recall, flat_row.sim_gap = 1.0, 0.0
    best_sims = truth_result.similarities[:, 0]
    if len(truth_queries) < len(queries):
        flat_row.notes.append(f"exact search and numpy on {len(truth_queries)} of {len(queries)} queries")
    rows.append(flat_row)

    # numpy brute force on the same stored vectors (no copy) and the same queries.
    stored = flat_contents(flat.faiss_index, flat.dim)[1]
    numpy_row = Row(n, "numpy matmul + argpartition")
    start = time.perf_counter()
    found = numpy_topk(stored, truth_queries, k)
    numpy_row.qps_batched = len(truth_queries) / (time.perf_counter() - start)
    if single:
        start = time.perf_counter()
        for i in range(single):
            numpy_topk(stored, truth_queries[i : i + 1], k)
        numpy_row.qps_single = single / (time.perf_counter() - start)
    numpy_row.recall = recall_at_k([[f"v{i}" for i in row] for row in found], truth, k)
    numpy_row.notes.append(f"{numpy_row.qps_batched / flat_row.qps_batched:.2f}x faiss flat batched")
    rows.append(numpy_row)
    progress(numpy_row)

    # Approximate kinds, built from the flat index's storage.
    ids = flat.ids()
    for spec in args.approx:
        settings = parse_spec(spec)
        rss_before = rss_bytes()
        start = time.perf_counter()
        approx = VectorIndex.build(ids, stored, settings)
        build_s = time.perf_counter() - start
        rss_delta = (rss_bytes() - rss_before) / n
        sweep = args.nprobes if approx.kind == "ivf" else args.ef_searches
        default_value = settings.nprobe if approx.kind == "ivf" else settings.ef_search
        for value in sorted(set([*sweep, default_value])):
            param = "nprobe" if approx.kind == "ivf" else "ef_search"
            apply_search_settings(approx.faiss_index, settings.model_copy(update={param: value}))
            is_default = value == default_value
            result, qps, single_qps = search_rates(approx, queries, k, single if is_default else 0)
            row = Row(n, f"{describe(approx)} {param}={value}", qps_batched=qps, qps_single=single_qps)
            row.recall = recall_at_k(result.ids[: len(truth)], truth, k)
            row.sim_gap = float(np.mean(best_sims - result.similarities[: len(truth), 0]))
            if is_default:
                row.build_s, row.rss_bytes_per_vec = build_s, rss_delta
                row.notes.append("build = training + adding, from stored vectors")
                apply_search_settings(approx.faiss_index, settings)
                row.snap_write_s, index_bytes = write_snapshot(approx, work / "approx")
                row.file_bytes_per_vec = index_bytes / n
                expected = approx.search(queries[:50], k).ids
                row.snap_read_s, same = read_snapshot(work / "approx", queries[:50], k, expected)
                row.notes.append(f"restored results identical: {same}")
            rows.append(row)
            progress(row)
        del approx

    # Flat snapshot: restored only after the in-memory flat index is freed (one copy at a time).
    expected = flat.search(queries[:50], k).ids
    flat_row.snap_write_s, index_bytes = write_snapshot(flat, work / "flat")
    flat_row.file_bytes_per_vec = index_bytes / n
    del stored, flat, truth_result
    flat_row.snap_read_s, same = read_snapshot(work / "flat", queries[:50], k, expected)
    flat_row.notes.append(f"restored results identical: {same}")
    progress(flat_row)
    return rows


def progress(row: Row) -> None:
    print(f"  n={row.size} {row.name}: {fmt(row.qps_batched, '.1f')} q/s, recall {fmt(row.recall, '.3f')}",
          file=sys.stderr)


def tqdm_chunks(chunks: Iterator[tuple[int, Matrix]], n: int, label: str) -> Iterator[tuple[int, Matrix]]:
    from tqdm import tqdm

    with tqdm(total=n, desc=label, unit="vec", unit_scale=True, file=sys.stderr, leave=False) as bar:
        for offset, chunk in chunks:
            yield offset, chunk
            bar.update(len(chunk))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=1000, help="queries for batched search")
    parser.add_argument("--exact-queries", type=int, default=200,
                        help="queries for exact/numpy search and recall above --single-limit")
    parser.add_argument("--single-queries", type=int, default=100, help="queries timed one at a time")
    parser.add_argument("--single-limit", type=int, default=200_000,
                        help="largest size timed one query at a time and with all queries exact")
    parser.add_argument("--approx", nargs="*", default=["auto"],
                        help="approximate kinds: auto or ivf|hnsw[:pca=N][:sq8|:f32][:nlist=N][:m=N]")
    parser.add_argument("--nprobes", type=int, nargs="*", default=[8, 16, 64])
    parser.add_argument("--ef-searches", type=int, nargs="*", default=[32, 64, 256])
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--intrinsic-dim", type=int, default=512)
    parser.add_argument("--spread", type=float, default=0.6)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vectors", type=Path, help="float32 .npy of real embeddings (instead of generated)")
    parser.add_argument("--work-dir", type=Path, help="where snapshots are written (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=1, help="FAISS and BLAS threads")
    args = parser.parse_args(argv)

    faiss.omp_set_num_threads(args.threads)
    data: ClusteredVectors | NpyVectors = NpyVectors(args.vectors) if args.vectors else ClusteredVectors(args)
    work = Path(tempfile.mkdtemp(prefix="faiss-bench-", dir=args.work_dir))
    print(
        f"faiss {faiss.__version__}, numpy {np.__version__}, {args.threads} thread(s) for FAISS and BLAS, "
        f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f} "
        "(other work shares this machine)"
    )
    if args.vectors:
        print(f"data: {args.vectors} {data.array.shape}")  # type: ignore[union-attr]
    else:
        print(
            f"data: dim {args.dim}, {args.clusters} clusters in a {args.intrinsic_dim}-d subspace "
            f"(power-law spectrum), spread {args.spread}, isotropic noise {args.noise}; k={args.k}"
        )
    rows: list[Row] = []
    try:
        with threadpool_limits(limits=args.threads):
            for n in args.sizes:
                rows.extend(run_size(n, data, args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(rows, args.k)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
