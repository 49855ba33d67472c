"""The embed stage on CUDA fed from real topics, next to the forward pass alone.

ResNet-50 at 224 px, mask+print channels, bf16 autocast, channels_last (what
``Encoder`` does on CUDA). Steps:

1. the forward pass alone in this process (pinned host batch -> device -> vectors
   back), per batch size: the ceiling the service can reach;
2. an embedded broker, the aligned topic pre-filled with N results (256 px
   inline PNGs, as align produces them), then ``lithowatch service embed`` with
   ``LITHOWATCH_DEVICE=cuda`` as its own process: results/s from the embedded
   topic's record timestamps (steady state, 10th..90th percentile), and the
   service's CPU seconds per result (decode + preprocess + serialisation: what
   keeps the GPU waiting);
3. the ratio service / forward pass alone.

Exits 0 with a message when CUDA is absent.

    python bench/gpu_pipeline.py
    python bench/gpu_pipeline.py --results 4000 --batch 256 --batch-sizes 64,256
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def forward_alone(encoder: object, batch: int, seconds: float) -> float:
    """Images/s of the host->device->host forward path at one batch size."""
    import torch

    from shared.model.encoder import Encoder

    assert isinstance(encoder, Encoder)
    size, channels = encoder.input_size, len(encoder.spec.channels)
    host = torch.rand(batch, channels, size, size).contiguous(memory_format=torch.channels_last).pin_memory()
    for _ in range(3):
        encoder.embed_tensor(host)
    torch.cuda.synchronize()
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        encoder.embed_tensor(host)  # returns host numpy: synchronises
        done += batch
    return done / (time.perf_counter() - began)


def aligned_messages(count: int, size_px: int, seed: int = 0) -> list[object]:
    """Distinct aligned results with random Manhattan masks and blurred prints (inline PNG)."""
    import cv2

    from shared.contracts import AlignedResult, Hashes, Transform
    from shared.imageref import make_image_ref
    from shared.testing import random_manhattan

    rng = np.random.default_rng(seed)
    out: list[object] = []
    now = __import__("datetime").datetime.now(__import__("datetime").UTC)
    for i in range(count):
        mask = random_manhattan(rng, size_px, n_rects=24)
        printed = (cv2.GaussianBlur(mask, (0, 0), 3.0) > 0.5).astype(np.float32)
        mask_ref, print_ref = make_image_ref(mask), make_image_ref(printed)
        out.append(
            AlignedResult(
                result_id=f"gpu-{i:07d}",
                nm_per_px=4.0,
                mask=mask_ref,
                simulated=print_ref,
                produced_at=now,
                hashes=Hashes(exact=mask_ref.sha256),
                aligned_simulated=print_ref,
                transform=Transform.identity(),
            )
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--results", type=int, default=3000, help="aligned results pre-filled")
    parser.add_argument("--batch", type=int, default=256, help="the service's LITHOWATCH_BATCH_MAX_MESSAGES")
    parser.add_argument("--batch-sizes", default="64,256", help="forward-alone batch sizes")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=400.0)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_pipeline: CUDA is not available on this machine (torch sees no GPU); nothing measured.")
        return 0

    from pipeline_bench import Tap, cpu_seconds, steady_rate

    from app.launcher import EmbeddedStack, wait_until
    from app.supervisor import Pipeline
    from shared.contracts import Topics
    from shared.model import build_untrained, save_encoder
    from shared.testing import produce

    torch.backends.cudnn.benchmark = True
    work = Path(tempfile.mkdtemp(prefix="lithowatch-gpu-"))
    encoder = build_untrained(args.arch, "mask,print", args.input_size, seed=0, device="cuda")
    model_dir = work / "model"
    save_encoder(encoder, model_dir, {"objective": "untrained", "metrics": {}})
    encoder.fuse_for_inference()  # as the embed service runs it
    name = torch.cuda.get_device_name(0)
    alone = {
        b: forward_alone(encoder, b, args.seconds) for b in (int(s) for s in args.batch_sizes.split(","))
    }
    for b, rate in alone.items():
        print(f"forward alone, batch {b}: {rate:.0f} img/s", flush=True)
    del encoder
    torch.cuda.empty_cache()

    print(f"generating {args.results} aligned results ...", flush=True)
    messages = aligned_messages(args.results, 256)
    with EmbeddedStack(workdir=work / "stack", partitions=4) as stack:
        produce(stack.bootstrap, Topics.ALIGNED, messages)  # type: ignore[arg-type]
        tap = Tap(stack.bootstrap, (Topics.EMBEDDED, Topics.DLQ)).start()
        pipeline = Pipeline(
            stack,
            service_env={
                "LITHOWATCH_MODEL_PATH": str(model_dir),
                "LITHOWATCH_DEVICE": "cuda",
                "LITHOWATCH_BATCH_MAX_MESSAGES": str(args.batch),
                "LITHOWATCH_BATCH_MAX_WAIT_MS": "20",
                "LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000",
                "LITHOWATCH_SESSION_TIMEOUT_MS": "6000",
                "LITHOWATCH_TORCH_THREADS": str(os.cpu_count() or 1),
            },
        )
        try:
            service = pipeline.start_service("embed")
            wait_until(lambda: len(tap.records) > 0, args.timeout, 0.05)
            cpu0, n0 = cpu_seconds(service.process.pid), len(tap.records)
            done = wait_until(lambda: len(tap.records) >= args.results, args.timeout, 0.1)
            cpu = cpu_seconds(service.process.pid) - cpu0
            n = len(tap.records)
        finally:
            tap.stop()
            pipeline.stop()
    dlq = sum(1 for t, _, _, _ in tap.records if t == Topics.DLQ)
    rate = steady_rate(ts for t, _, ts, _ in tap.records if t == Topics.EMBEDDED)
    best = max(alone.values())
    print()
    print(f"embed stage on {name}: {args.arch} {args.input_size} px, bf16 autocast, channels_last")
    print(f"{'forward alone (best batch)':<34}{best:10.0f} img/s")
    print(
        f"{'embed service from topics':<34}{rate:10.0f} results/s  (batch {args.batch}, {n} of "
        f"{args.results} done{'' if done else ', TIMED OUT'}, {dlq} DLQ)"
    )
    print(f"{'service CPU per result':<34}{cpu / max(1, n - n0) * 1000:10.2f} ms")
    print(f"{'ratio service / forward alone':<34}{rate / best:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
