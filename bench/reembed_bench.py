"""Re-embedding a library with a new model (``lithowatch library reembed``): time and peak memory.

A library of ``--entries`` reference entries (256 px Manhattan clips at 4 nm/px and their
blurred prints, PNG, half inline and half in the blob store, as ``library build`` writes them;
``--distinct`` clips, cycled)
is published to a real broker (the embedded Tansu) and re-embedded by ``--model`` (the shipped
model by default) into that model's library topic, in a child process of its own so its peak
resident memory is its own. Beside it, in another child, the baseline: the same images decoded
and run through the same encoder batch by batch with nothing else (no topic read, no planning,
no publishing), so the ratio is what the library round trip costs on top of the model.

Each child reports wall seconds, its CPU seconds (user + system, less sensitive than wall time to
other work on the host), entries/s and peak RSS (``ru_maxrss``); ``--reembed-first`` swaps the
order, to see how much the host's load moved between them. Nothing is asserted.

    python bench/reembed_bench.py                       # 10,000 entries, the shipped model, CPU
    python bench/reembed_bench.py --entries 2000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.blobstore import LocalBlobStore
from shared.contracts import Hashes, LibraryEntry, Vector
from shared.imageref import make_image_ref
from shared.settings import CommonSettings

CLIP_PX = 256
NM_PER_PX = 4.0
OLD_DIM = 512


def synthetic_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    from shared.testing import random_manhattan

    mask = random_manhattan(rng, CLIP_PX, n_rects=int(rng.integers(4, 12))).astype(np.float32)
    blurred = cv2.GaussianBlur(mask, (0, 0), sigmaX=float(rng.uniform(2.0, 4.0)))
    printed = (1.0 / (1.0 + np.exp(-(blurred - 0.5) / 0.05))).astype(np.float32)
    return mask, printed


def make_entries(count: int, distinct: int, blobs: LocalBlobStore, out: Path, seed: int = 0) -> None:
    """``count`` entries of an old model as JSON lines, their images inline or in ``blobs``, cycling
    through ``distinct`` clips (each entry is still read, decoded and embedded on its own)."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    refs = []
    for i in tqdm(range(min(count, distinct)), desc="clips", unit="clip"):
        mask, printed = synthetic_pair(rng)
        limit = 0 if i % 2 else 1 << 20  # every other clip's images in the blob store
        refs.append((make_image_ref(mask, "png", blobs, limit), make_image_ref(printed, "png", blobs, limit)))
    with out.open("w", encoding="utf-8") as lines:
        for i in tqdm(range(count), desc="library", unit="entry"):
            mask_ref, print_ref = refs[i % len(refs)]
            vector = rng.standard_normal(OLD_DIM).astype(np.float32)
            entry = LibraryEntry(
                entry_id=f"ref-{i:06d}",
                vector=Vector.from_array(vector / np.linalg.norm(vector)),
                model_version="bench-old-model",
                labels={"family": f"f{i % 7}", "group": f"g{i // 4}"},
                mask=mask_ref,
                simulated=print_ref,
                hashes=Hashes(exact=f"{i:064x}"),
                nm_per_px=NM_PER_PX,
            )
            lines.write(entry.model_dump_json() + "\n")


def publish_entries(settings: CommonSettings, path: Path) -> int:
    from shared.contracts import Topics
    from shared.kafka_io import make_producer

    producer = make_producer(settings, client_id="reembed-bench")
    futures = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            entry_id = json.loads(line)["entry_id"]
            futures.append(producer.send(Topics.LIBRARY, key=entry_id.encode(), value=line.strip().encode()))
    producer.flush(timeout=300)
    for future in futures:
        future.get(timeout=60)
    producer.close(timeout=5)
    return len(futures)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def load_model(args: argparse.Namespace) -> Any:
    import torch

    from shared.model import load_encoder
    from shared.model.default import default_model_path

    torch.set_num_threads(args.threads)
    return load_encoder(args.model or default_model_path(), device=args.device)


def child_reembed(args: argparse.Namespace) -> dict[str, Any]:
    from services.novelty.reembed import run_reembed

    encoder = load_model(args)
    settings = CommonSettings(kafka_bootstrap=args.bootstrap, blob_root=Path(args.blobs))
    began, cpu = time.perf_counter(), cpu_seconds()
    report = run_reembed(settings, encoder, batch_size=args.batch_size, progress=True)
    seconds = time.perf_counter() - began
    return {
        "what": "library reembed (read topic, plan, decode, embed, publish)",
        "entries": report.embedded,
        "left_out": len(report.left_out),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu,
        "model": encoder.model_version,
        "dim": encoder.dim,
        "device": str(encoder.device),
        "peak_rss_mib": peak_rss_mib(),
    }


def child_baseline(args: argparse.Namespace) -> dict[str, Any]:
    from shared.blobstore import LocalBlobStore
    from shared.imageref import ImageLoader

    encoder = load_model(args)
    loader = ImageLoader(LocalBlobStore(Path(args.blobs)))
    lines = Path(args.entries_file).read_text(encoding="utf-8").splitlines()
    began, cpu = time.perf_counter(), cpu_seconds()
    model_seconds = 0.0
    done = 0
    for start in range(0, len(lines), args.batch_size):
        batch = [LibraryEntry.model_validate_json(line) for line in lines[start : start + args.batch_size]]
        masks = [loader(e.mask) for e in batch if e.mask is not None]
        prints = [loader(e.simulated) for e in batch if e.simulated is not None]
        scales = [NM_PER_PX] * len(masks) if encoder.nm_per_px is not None else None
        t0 = time.perf_counter()
        encoder.embed(masks, prints, scales)
        model_seconds += time.perf_counter() - t0
        done += len(masks)
    return {
        "what": "baseline: decode + encoder only",
        "entries": done,
        "seconds": time.perf_counter() - began,
        "cpu_seconds": cpu_seconds() - cpu,
        "model_seconds": model_seconds,
        "model": encoder.model_version,
        "device": str(encoder.device),
        "peak_rss_mib": peak_rss_mib(),
    }


def run_child(phase: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        *(["--model", str(args.model)] if args.model else []),
        *extra,
    ]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--distinct", type=int, default=1000, help="distinct clips the entries cycle through")
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--reembed-first", action="store_true", help="run the re-embedding before the baseline"
    )
    parser.add_argument("--phase", choices=("main", "reembed", "baseline"), default="main")
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--blobs", default="")
    parser.add_argument("--entries-file", default="")
    args = parser.parse_args()
    if args.phase == "reembed":
        print(json.dumps(child_reembed(args)))
        return 0
    if args.phase == "baseline":
        print(json.dumps(child_baseline(args)))
        return 0

    from app.launcher import EmbeddedStack

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="reembed-bench-"))
    blobs = workdir / "blobs"
    entries_file = workdir / "entries.jsonl"
    t0 = time.perf_counter()
    make_entries(args.entries, args.distinct, LocalBlobStore(blobs), entries_file)
    made = time.perf_counter() - t0
    stack = EmbeddedStack(workdir=workdir / "stack", partitions=1)
    stack.start()
    try:
        settings = CommonSettings(kafka_bootstrap=stack.bootstrap, blob_root=blobs)
        t0 = time.perf_counter()
        published = publish_entries(settings, entries_file)
        publish_seconds = time.perf_counter() - t0
        print(
            f"library: {published} entries ({entries_file.stat().st_size / 2**20:.0f} MiB of records) "
            f"made in {made:.1f} s, published in {publish_seconds:.1f} s",
            flush=True,
        )
        runs = {
            "baseline": lambda: run_child(
                "baseline", args, ["--blobs", str(blobs), "--entries-file", str(entries_file)]
            ),
            "reembed": lambda: run_child(
                "reembed", args, ["--bootstrap", stack.bootstrap, "--blobs", str(blobs)]
            ),
        }
        first, second = ("reembed", "baseline") if args.reembed_first else ("baseline", "reembed")
        results = {first: runs[first](), second: runs[second]()}
        baseline, reembed = results["baseline"], results["reembed"]
    finally:
        stack.stop()
    print(
        f"\nmodel {reembed['model']} ({reembed['dim']}-d) on {reembed['device']}, "
        f"{args.threads} torch threads, batch {args.batch_size}, host CPUs {os.cpu_count()}"
    )
    print(f"{'':<42}{'entries':>9}{'seconds':>10}{'CPU s':>9}{'entries/s':>11}{'peak RSS MiB':>14}")
    for row in (baseline, reembed):
        rate = row["entries"] / row["seconds"] if row["seconds"] else 0.0
        print(
            f"{row['what'][:41]:<42}{row['entries']:>9}{row['seconds']:>10.1f}{row['cpu_seconds']:>9.1f}"
            f"{rate:>11.1f}{row['peak_rss_mib']:>14.0f}"
        )
    print(
        f"baseline model-only seconds: {baseline['model_seconds']:.1f}; reembed / baseline: wall "
        f"{reembed['seconds'] / baseline['seconds']:.2f}x, "
        f"CPU {reembed['cpu_seconds'] / baseline['cpu_seconds']:.2f}x; "
        f"left out: {reembed['left_out']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
