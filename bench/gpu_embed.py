"""GPU embedding throughput: ResNet-50 at 224 px, bf16 autocast, channels_last, CUDA.

Measures images/s of the encoder's forward pass across batch sizes, with the
preprocessed batch already on the host in pinned memory (the embed service's
path: pinned host tensor -> non-blocking copy -> forward -> vectors back to the
host). Random inputs; no data set needed. Prints a table and the float32 figure
at one batch size as the baseline. Exits 0 with a message when no GPU is present.

    python bench/gpu_embed.py
    python bench/gpu_embed.py --batch-sizes 16,64,256 --seconds 5 --channels mask,print,diff
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.model import build_untrained
from shared.model.encoder import Encoder


def measure(encoder: Encoder, batch: int, seconds: float, bf16: bool) -> tuple[float, float]:
    """(images/s, mean ms per batch) for the host->device->host path."""
    size, channels = encoder.input_size, len(encoder.spec.channels)
    host = torch.rand(batch, channels, size, size).contiguous(memory_format=torch.channels_last).pin_memory()
    device = encoder.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)

    def step() -> torch.Tensor:
        with torch.inference_mode(), autocast:
            z = encoder.net(host.to(device, non_blocking=True))
        return z.float().cpu()

    for _ in range(3):  # warm-up: cuDNN algorithm choice, allocator
        step()
    torch.cuda.synchronize(device)
    count, batches, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        count += batch
        batches += 1
    elapsed = time.perf_counter() - started
    return count / elapsed, 1000.0 * elapsed / batches


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--channels", default="mask,print")
    ap.add_argument("--batch-sizes", default="16,32,64,128,256,512")
    ap.add_argument("--seconds", type=float, default=4.0, help="measuring time per batch size")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_embed: no CUDA device available (torch.cuda.is_available() is False); nothing to measure.")
        return 0
    torch.backends.cudnn.benchmark = True
    encoder = build_untrained(args.arch, args.channels, args.input_size, device="cuda")
    name = torch.cuda.get_device_name(encoder.device)
    print(f"{name}, torch {torch.__version__}, {args.arch} @{args.input_size}px, channels {args.channels}, "
          f"dim {encoder.dim}, bf16 autocast + channels_last, pinned host input")
    print(f"{'batch':>6} {'img/s':>10} {'ms/batch':>9}")
    best = 0.0
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        try:
            rate, ms = measure(encoder, batch, args.seconds, bf16=True)
        except torch.cuda.OutOfMemoryError:
            print(f"{batch:>6} out of GPU memory")
            torch.cuda.empty_cache()
            break
        best = max(best, rate)
        print(f"{batch:>6} {rate:>10.0f} {ms:>9.2f}")
    base_batch = 64
    rate32, ms32 = measure(encoder, base_batch, args.seconds, bf16=False)
    print(f"baseline float32 (no autocast), batch {base_batch}: {rate32:.0f} img/s, {ms32:.2f} ms/batch; "
          f"best bf16 / float32 = {best / rate32:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
