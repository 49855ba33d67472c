"""Encoder benchmark: retrieval of same-layout variants on held-out layouts, and CPU speed.

One run prints one table. Data (cached under ``--cache``, regenerated when absent):

- train: ``--train-groups`` layouts from every family but ``--holdout-family``,
  ``--train-variants`` results each (nominal + random shift / dose / focus / bias),
  10 % with an injected defect;
- val: ``--val-groups`` *other* layouts (another farm seed) from all families,
  ``--val-variants`` results each, no defects.

Methods, all scored by P@5 by ``group`` (cosine, self excluded) on val, overall and
with queries restricted to the held-out family: downsampled pixels, pHash, the
untrained networks, the autoencoder, and the default encoder trained for at most
``--minutes`` on this machine. Then the forward-pass throughput of the default
model (batch 64, ``--threads`` threads) against the CPU's matmul roofline.

    python bench/encoder_bench.py                       # everything (~25 min on 2 busy cores)
    python bench/encoder_bench.py --methods pixel,phash,untrained
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.dataset import Dataset, DatasetWriter, read_dataset
from shared.errors import ContractError
from shared.model import build_untrained, embed_dataset, load_encoder, save_encoder
from toolkit.litho import FAMILIES, ClipSample, FarmGenerator, Variant, applicable_defects
from toolkit.training.evaluate import precision_at_k
from toolkit.training.train import TrainConfig, train_encoder

ALL_METHODS = ("pixel", "phash", "untrained", "autoencoder", "supervised", "default", "speed")


def farm_samples(farm: FarmGenerator, n_groups: int, variants: int) -> Iterator[ClipSample]:
    """Like ``FarmGenerator.samples``, but a layout draw that fails is drawn again."""
    made = 0
    while made < n_groups:
        try:
            layout = farm.new_layout()
        except ValueError as exc:  # a generator parameter range came out empty
            print(f"  (layout draw failed: {exc}; drawing another)", flush=True)
            continue
        group = farm.group_id(layout)
        for v in range(variants):
            variant = Variant() if v == 0 else farm.random_variant(16)
            defect = None
            if farm.defect_rate > 0 and farm.rng.random() < farm.defect_rate:
                options = applicable_defects(layout, farm.window_nm(variant.shift_px), farm.rng)
                defect = str(farm.rng.choice(options)) if options else None
            try:
                yield farm.render(layout, group, variant, defect)
            except ContractError:  # no site for that defect in this window after all
                yield farm.render(layout, group, variant, None)
        made += 1


def generate(root: Path, seed: int, families: tuple[str, ...], n_groups: int, variants: int,
             defect_rate: float) -> Dataset:
    if (root / "manifest.jsonl").is_file():
        return read_dataset(root)
    tmp = root.with_name(root.name + ".partial")
    farm = FarmGenerator(seed=seed, families=families, defect_rate=defect_rate)
    started = time.perf_counter()
    with DatasetWriter(tmp) as writer:
        for i, sample in enumerate(farm_samples(farm, n_groups, variants)):
            writer.add(sample.id, sample.mask, sample.simulated, sample.nm_per_px, sample.labels)
            if (i + 1) % 500 == 0:
                print(f"  {root.name}: {i + 1}/{n_groups * variants} results "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
    tmp.rename(root)
    return read_dataset(root)


def load_pairs(dataset: Dataset) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [it.load_mask() for it in dataset], [it.load_simulated() for it in dataset]


def pixel_vectors(masks: list[np.ndarray], prints: list[np.ndarray], size_px: int = 16) -> np.ndarray:
    """Both images area-averaged to ``size_px``, concatenated, mean-centred."""
    rows = []
    for m, p in zip(masks, prints, strict=True):
        small = [cv2.resize(img, (size_px, size_px), interpolation=cv2.INTER_AREA).ravel() for img in (m, p)]
        v = np.concatenate(small)
        rows.append(v - v.mean())
    return np.stack(rows).astype(np.float32)


def phash_vectors(masks: list[np.ndarray], prints: list[np.ndarray]) -> np.ndarray:
    """64-bit pHash of mask and of print, as +-1 vectors (cosine = 1 - 2 Hamming / 128)."""
    hasher = cv2.img_hash.PHash_create()
    rows = []
    for m, p in zip(masks, prints, strict=True):
        bits = [np.unpackbits(hasher.compute((img * 255).astype(np.uint8)).ravel()) for img in (m, p)]
        rows.append(np.concatenate(bits).astype(np.float32) * 2.0 - 1.0)
    return np.stack(rows)


def call_seconds(fn: Callable[[], object], calls: int, budget_seconds: float) -> list[float]:
    """Durations of at least ``calls`` timed calls (more while within the budget), after one warm-up.

    Other processes share these cores, so both the fastest call (the least disturbed
    one; used against the roofline) and the median are reported.
    """
    fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < calls or time.perf_counter() - started < budget_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def matmul_gflops(n: int = 4096) -> float:
    """Best float32 matmul rate: the roofline (about the FMA peak of these cores)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2.0 * n**3 / min(call_seconds(lambda: torch.mm(a, b), calls=5, budget_seconds=3.0)) / 1e9


def forward_speed(ckpt: Path, batch: int = 64, budget_seconds: float = 6.0) -> tuple[float, float, float]:
    """Best and median images/s of the forward pass (inference mode, channels_last), GFLOP per image."""
    enc = load_encoder(ckpt, device="cpu")
    x = torch.randn(batch, len(enc.spec.channels), enc.input_size, enc.input_size)
    x = x.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        enc.net(x)
    gflop_per_image = counter.get_total_flops() / batch / 1e9
    with torch.inference_mode():
        times = call_seconds(lambda: enc.net(x), calls=3, budget_seconds=budget_seconds)
    return batch / min(times), batch / float(np.median(times)), gflop_per_image


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/lithowatch-bench"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/lithowatch-encoder"), help="checkpoints go here")
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--holdout-family", default="sram", choices=FAMILIES)
    ap.add_argument("--train-groups", type=int, default=700)
    ap.add_argument("--train-variants", type=int, default=6)
    ap.add_argument("--val-groups", type=int, default=320)
    ap.add_argument("--val-variants", type=int, default=8)
    ap.add_argument("--arch", default="resnet18-w32", help="backbone of the default model")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--channels", default="mask,print")
    ap.add_argument("--projection-dim", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget of the default model")
    ap.add_argument("--ae-minutes", type=float, default=5.0, help="training budget of the autoencoder")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for training and embedding (1 is several times faster than 2 "
                    "when other processes keep both cores busy; the speed section measures 1 and 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    methods = set(args.methods.split(","))
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, os.cpu_count={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f} (other work shares these cores)", flush=True)

    train_families = tuple(f for f in FAMILIES if f != args.holdout_family)
    tag = f"{args.holdout_family}-{args.train_groups}x{args.train_variants}"
    train = generate(args.cache / f"train-{tag}", 1000 + args.seed, train_families,
                     args.train_groups, args.train_variants, defect_rate=0.1)
    val = generate(args.cache / f"val-{args.val_groups}x{args.val_variants}", 2000 + args.seed, FAMILIES,
                   args.val_groups, args.val_variants, defect_rate=0.0)
    overlap = set(train.labels_of("group")) & set(val.labels_of("group"))
    groups = val.labels_of("group")
    holdout = np.array([f == args.holdout_family for f in val.labels_of("family")])
    print(f"train: {len(train)} results, {len(set(train.labels_of('group')))} layouts, families "
          f"{', '.join(train_families)}; val: {len(val)} results, {len(set(groups))} layouts "
          f"({int(holdout.sum())} results of held-out family {args.holdout_family!r}); "
          f"layouts shared: {len(overlap)}", flush=True)
    masks, prints = load_pairs(val)

    rows: list[tuple[str, float, float, str]] = []

    families = np.array(val.labels_of("family"))

    def score(name: str, vectors: np.ndarray, note: str = "") -> None:
        rows.append((name, precision_at_k(vectors, groups, 5),
                     precision_at_k(vectors, groups, 5, query_mask=holdout), note))
        per_family = " ".join(f"{f} {precision_at_k(vectors, groups, 5, query_mask=families == f):.3f}"
                              for f in FAMILIES)
        print(f"  {name:<44} P@5 {rows[-1][1]:.3f}  held-out family {rows[-1][2]:.3f}  {note}\n"
              f"  {'':<44} by family: {per_family}", flush=True)

    def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - started

    if "pixel" in methods:
        v, t = timed(lambda: pixel_vectors(masks, prints))
        score("pixels 16x16 (mask+print), cosine", v, f"{len(val) / t:.0f} img/s")
    if "phash" in methods:
        v, t = timed(lambda: phash_vectors(masks, prints))
        score("pHash (mask+print, 128 bit), Hamming", v, f"{len(val) / t:.0f} img/s")
    if "untrained" in methods:
        for arch in ("resnet18", args.arch):
            enc = build_untrained(arch, args.channels, args.input_size, seed=args.seed, device="cpu")
            v, t = timed(lambda enc=enc: enc.embed(masks, prints))  # type: ignore[misc]
            score(f"untrained {arch} @{args.input_size}px", v, f"dim {enc.dim}")
    trained: dict[str, Path] = {}
    if "autoencoder" in methods:
        cfg = TrainConfig(objective="autoencoder", arch="autoencoder", channels=args.channels,
                          input_size=args.input_size, epochs=args.epochs, batch_size=args.batch_size,
                          max_minutes=args.ae_minutes, seed=args.seed, device="cpu", threads=args.threads,
                          val_fraction=0.1)
        res = train_encoder(train.root, args.out / "autoencoder", cfg, progress=False)
        trained["autoencoder"] = res.checkpoint
        v = embed_dataset(val, res.checkpoint, device="cpu", progress=False)
        score(f"autoencoder bottleneck, {res.metadata.metrics['train_seconds']:.0f} s training", v,
              f"{res.metadata.metrics['train_steps']} steps")
    for objective in ("supervised", "default"):
        if objective not in methods:
            continue
        cfg = TrainConfig(objective="supervised" if objective == "supervised" else "contrastive",
                          arch=args.arch, channels=args.channels, input_size=args.input_size,
                          projection_dim=args.projection_dim, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr,
                          max_minutes=args.minutes, seed=args.seed, device="cpu", threads=args.threads,
                          val_fraction=0.1)
        res = train_encoder(train.root, args.out / objective, cfg, progress=False)
        trained[objective] = res.checkpoint
        v = embed_dataset(val, res.checkpoint, device="cpu", progress=False)
        m = res.metadata.metrics
        score(f"{cfg.objective} {args.arch}, {m['train_seconds']:.0f} s training", v,
              f"{m['train_steps']} steps; inner val {m.get('val_p_at_5')} vs untrained "
              f"{m.get('val_p_at_5_untrained')}")
        print(f"  checkpoint: {res.checkpoint} ({res.metadata.model_version})", flush=True)

    print()
    print(f"{'method':<46} {'P@5 all':>8} {'P@5 ' + args.holdout_family:>11}  note")
    for name, p_all, p_hold, note in rows:
        print(f"{name:<46} {p_all:>8.3f} {p_hold:>11.3f}  {note}")

    if "speed" in methods:
        ckpt = trained.get("default")
        if ckpt is None and (args.out / "default" / "metadata.json").is_file():
            ckpt = args.out / "default"  # from an earlier run
        if ckpt is None:
            ckpt = args.out / "untrained"
            save_encoder(build_untrained(args.arch, args.channels, args.input_size, device="cpu"), ckpt)
        models: list[tuple[str, int, Path | None]] = [
            (args.arch, args.input_size, ckpt), ("resnet18", args.input_size, None), ("resnet50", 224, None)
        ]
        print("\nforward pass, batch 64, inference_mode, channels_last, float32 "
              f"(load average now {os.getloadavg()[0]:.2f}: other work shares these 2 cores)")
        for threads in (1, 2):
            torch.set_num_threads(threads)
            # The roofline is the best matmul seen around every model measurement: one
            # measurement alone may fall into a moment when other work holds the cores.
            peaks = [matmul_gflops()]
            results = []
            for arch, size, path in models:
                if path is None:
                    path = args.out / f"speed-{arch}-{size}"
                    save_encoder(build_untrained(arch, args.channels, size, device="cpu"), path)
                results.append((arch, size, *forward_speed(path)))
                peaks.append(matmul_gflops())
            peak = max(peaks)
            print(
                f"  {threads} thread(s): roofline = best 4096x4096 float32 matmul {peak:.1f} GFLOP/s "
                f"(measured {len(peaks)} times: {min(peaks):.0f}..{peak:.0f})"
            )
            for arch, size, best, median, gflop in results:
                print(f"    {arch:>13} @{size:>3}px: {best:7.1f} img/s best, {median:7.1f} median; "
                      f"{gflop:.3f} GFLOP/img; best = {best * gflop:5.1f} GFLOP/s = "
                      f"{best * gflop / peak:4.0%} of the roofline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
