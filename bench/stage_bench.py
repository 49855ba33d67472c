"""In-process measurements used by ``bench/pipeline_bench.py``.

- the CPU's matmul roofline (GFLOP/s of a large float32 matmul with torch);
- the encoder's forward pass alone (batch 64) and its FLOPs per image;
- each stage core run in this process over already decoded messages, in
  batches of the service's batch size: results/s, CPU seconds per result and
  the per-batch latency (what every message of the batch waits) p50/p99.

Run alone for the model figures: ``python bench/stage_bench.py --model-dir DIR``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class StageFigures:
    """One stage measured in this process."""

    name: str
    items: int
    results_per_second: float
    cpu_seconds_per_result: float
    batch_latency_p50_seconds: float
    batch_latency_p99_seconds: float


@dataclass
class ModelFigures:
    arch: str
    input_size: int
    channels: int
    threads: int
    batch: int
    images_per_second: float
    gflop_per_image: float
    achieved_gflops: float
    matmul_gflops: float

    @property
    def roofline_fraction(self) -> float:
        return self.achieved_gflops / self.matmul_gflops if self.matmul_gflops > 0 else 0.0


def matmul_gflops(threads: int, repeats: int = 5) -> float:
    """The CPU's practical float32 roofline: best GFLOP/s of GEMM-shaped kernels.

    A matmul alone can understate it (MKL picks a slow path on some CPUs while the
    oneDNN convolutions the encoder runs do not), so the best of square matmuls
    (512 to 2048) and a 1x1 convolution (a GEMM through oneDNN) is taken.
    """
    import torch

    torch.set_num_threads(threads)

    def best_seconds(run: Callable[[], object]) -> float:
        run()
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - began)
        return best

    rates = []
    for size in (512, 1024, 2048):
        a, b = torch.randn(size, size), torch.randn(size, size)
        rates.append(2.0 * size**3 / best_seconds(partial(torch.mm, a, b)) / 1e9)
    x, w = torch.randn(8, 512, 28, 28), torch.randn(512, 512, 1, 1)
    conv_flop = 2.0 * 8 * 28 * 28 * 512 * 512
    rates.append(conv_flop / best_seconds(partial(torch.nn.functional.conv2d, x, w)) / 1e9)
    return max(rates)


def model_forward(model_dir: Path, threads: int, batch: int = 0, seconds: float = 6.0) -> ModelFigures:
    """Images/s of ``Encoder.embed_tensor`` alone on a preprocessed batch, and its FLOPs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from shared.model import load_encoder

    torch.set_num_threads(threads)
    encoder = load_encoder(model_dir, device="cpu")
    encoder.fuse_for_inference()  # as the embed service runs it
    size = encoder.input_size
    batch = batch or (64 if size <= 128 else 16)
    rng = np.random.default_rng(0)
    masks = [(rng.random((size, size)) > 0.5).astype(np.float32) for _ in range(batch)]
    prints = [rng.random((size, size)).astype(np.float32) for _ in range(batch)]
    scales = None if encoder.nm_per_px is None else [encoder.nm_per_px] * batch  # images at the input scale
    x = encoder.preprocess(masks, prints, scales)
    encoder.embed_tensor(x)  # warm-up
    counter = FlopCounterMode(display=False)
    with counter:
        encoder.embed_tensor(x)
    flops_per_image = counter.get_total_flops() / batch
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        encoder.embed_tensor(x)
        done += batch
    rate = done / (time.perf_counter() - began)
    return ModelFigures(
        arch=encoder.spec.arch,
        input_size=size,
        channels=len(encoder.spec.channels),
        threads=threads,
        batch=batch,
        images_per_second=rate,
        gflop_per_image=flops_per_image / 1e9,
        achieved_gflops=rate * flops_per_image / 1e9,
        matmul_gflops=matmul_gflops(threads),
    )


def time_stage(
    name: str, process_batch: Callable[[Sequence[Any]], Sequence[Any]], items: Sequence[Any], batch: int
) -> StageFigures:
    """Run ``process_batch`` over ``items`` in chunks of ``batch``; wall, CPU and per-batch latency."""
    if not items:
        return StageFigures(name, 0, 0.0, 0.0, 0.0, 0.0)
    process_batch(items[: min(4, len(items))])  # warm-up (imports, first allocations)
    latencies: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for start in range(0, len(items), batch):
        began = time.perf_counter()
        process_batch(items[start : start + batch])
        latencies.append(time.perf_counter() - began)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    return StageFigures(
        name,
        len(items),
        len(items) / wall,
        cpu / len(items),
        float(np.percentile(latencies, 50)),
        float(np.percentile(latencies, 99)),
    )


@dataclass
class CoreInputs:
    """Decoded input messages of every stage (read back from the topics)."""

    results: list[Any]
    unique: list[Any]
    aligned: list[Any]
    embedded: list[Any]
    alerts: list[Any]


def time_cores(
    inputs: CoreInputs,
    blob_root: Path,
    redis_url: str,
    bootstrap: str,
    model_dir: Path,
    thresholds_path: Path | None,
    torch_threads: int,
) -> list[StageFigures]:
    """Every stage core in this process, built as its service's ``main`` builds it."""
    import torch

    from services.align.core import AlignCore
    from services.dedupe.core import DedupeCore, DedupeSettings
    from services.dedupe.main import redis_client
    from services.dedupe.stage import DedupeStage
    from services.dedupe.store_redis import RedisDedupeStore
    from services.embed.core import EmbedCore, EmbedCoreSettings
    from services.embed.stage import EmbedStage
    from services.explain.core import ExplainCore
    from services.novelty.core import NoveltyConfig, NoveltyCore
    from services.novelty.library_feed import LibraryFeed
    from services.novelty.main import ThresholdsWatcher
    from shared.blobstore import LocalBlobStore
    from shared.imageref import ImageLoader
    from shared.index import IndexSettings
    from shared.model import load_encoder
    from shared.registration import AlignSettings
    from shared.settings import CommonSettings

    settings = CommonSettings(kafka_bootstrap=bootstrap, redis_url=redis_url, blob_root=blob_root)  # type: ignore[arg-type]
    store = LocalBlobStore(blob_root)
    loader = ImageLoader(store)
    figures: list[StageFigures] = []

    client = redis_client(settings)
    prefix = f"bench:dedupe:{os.getpid()}:{time.time_ns()}"
    dedupe = DedupeStage(
        DedupeCore(RedisDedupeStore(client, prefix, 3600), DedupeSettings(), load_image=loader)
    )
    figures.append(time_stage("dedupe", dedupe.process_batch, inputs.results, 32))

    align = AlignCore(
        loader, AlignSettings(quality_floor=0.5, max_shift_px=32, fallback="akaze"), "flag", store
    )
    figures.append(time_stage("align", align.process_batch, inputs.unique, 32))

    torch.set_num_threads(torch_threads)
    encoder = load_encoder(model_dir, device="cpu")
    encoder.fuse_for_inference()
    embed = EmbedStage(EmbedCore(encoder, EmbedCoreSettings(max_batch_size=16)), loader)
    figures.append(time_stage("embed", embed.process_batch, inputs.aligned, 16))

    feed = LibraryFeed(settings, None, None, IndexSettings(kind="auto"))
    feed.start()
    watcher = ThresholdsWatcher(thresholds_path, 0.1, None)
    novelty = NoveltyCore(lambda: feed.state, watcher, NoveltyConfig(k=5, provisional=True))
    figures.append(time_stage("novelty", novelty.process_batch, inputs.embedded, 32))
    feed.close()

    explain = ExplainCore(loader, store, 3)
    figures.append(time_stage("explain", explain.process_batch, inputs.alerts, 32))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    fig = model_forward(args.model_dir, args.threads)
    print(
        f"forward pass of {fig.arch} at {fig.input_size} px: {fig.images_per_second:.1f} img/s "
        f"(batch {fig.batch}, {fig.threads} threads), "
        f"{fig.gflop_per_image:.3f} GFLOP/img -> {fig.achieved_gflops:.1f} GFLOP/s of "
        f"{fig.matmul_gflops:.1f} GFLOP/s matmul roofline ({fig.roofline_fraction:.0%})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
