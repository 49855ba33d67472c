"""``lithowatch train``: train an encoder on a data set folder and write a checkpoint."""

from __future__ import annotations

import argparse
import json
import math
from typing import Literal

from pydantic import ValidationError

from shared.model.descriptors import DescriptorSpec
from shared.model.nets import ARCHS
from shared.model.preprocess import CHANNEL_SETS
from toolkit.training.train import TRAIN_OBJECTIVES, TrainConfig, train_encoder


def _scale(text: str) -> float | Literal["auto"] | None:
    """``--input-nm-per-px``: a positive number, ``auto`` or ``none``."""
    if text.strip().lower() == "none":
        return None
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected nm per pixel or 'none', got {text!r}") from exc
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _hybrid(text: str) -> DescriptorSpec | None:
    """``--hybrid-weights``: ``L,P,S`` or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        learned, pixels, spectral = (float(v) for v in text.split(","))
        return DescriptorSpec(learned_weight=learned, pixel_weight=pixels, spectral_weight=spectral)
    except (ValueError, ValidationError) as exc:
        raise argparse.ArgumentTypeError(
            f"expected three non-negative weights LEARNED,PIXELS,SPECTRAL (not all 0) or 'none', got {text!r}"
        ) from exc


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train an encoder (supervised, contrastive, crossview, contrastive+crossview or "
        "autoencoder) and write a checkpoint",
        description="Train an encoder on a data set folder (manifest.jsonl). Whole layouts (label "
        "'group') are held out for validation; P@5 by group on them is reported for the trained "
        "and the untrained network. Writes <out>/model.safetensors, metadata.json, loss_curve.png.",
    )
    p.add_argument(
        "--dataset",
        required=True,
        action="append",
        help="data set folder with manifest.jsonl; repeat to train on several as one (generated + real)",
    )
    p.add_argument(
        "--eval-dataset",
        default=None,
        help="data set of layouts never trained on (e.g. the eval half of dataset from-layout --rows): "
        "training ends with a table on it (the trained vector, the learned part alone, the fixed "
        "descriptors alone, pixel and pHash baselines) and a verdict against the bars",
    )
    p.add_argument(
        "--hybrid-weights",
        type=_hybrid,
        default=DescriptorSpec(),
        help="the model's vector: LEARNED,PIXELS,SPECTRAL weights of the learned features, the blurred "
        "pixel descriptor and the Fourier-magnitude descriptor (default 1,1,1); 'none' = learned alone",
    )
    p.add_argument(
        "--objective",
        choices=TRAIN_OBJECTIVES,
        default="contrastive",
        help="contrastive: two farm variants of a layout are one thing (default); crossview: a mask "
        "and its own print are one thing (shared trunk, mask-only and print-only views, the full "
        "input pulled to both); contrastive+crossview: both on the same batch; supervised: label "
        "heads; autoencoder: reconstruction",
    )
    p.add_argument(
        "--backbone",
        choices=ARCHS,
        default=None,
        help="network (default: resnet18-w32; autoencoder for --objective autoencoder)",
    )
    p.add_argument("--channels", choices=CHANNEL_SETS, default="mask,print")
    p.add_argument("--input-size", type=int, default=64, help="square input size in px (default 64)")
    p.add_argument(
        "--projection-dim",
        type=int,
        default=0,
        help="projection head output size; 0 = pooled features (autoencoder: bottleneck, default 128)",
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="items per step; contrastive and contrastive+crossview: anchors + partners (the anchors "
        "also give the single views); crossview: items, each seen as three views",
    )
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate")
    p.add_argument(
        "--temperature", type=float, default=0.1, help="InfoNCE temperature (contrastive, crossview)"
    )
    p.add_argument(
        "--crossview-weight",
        type=float,
        default=0.5,
        help="contrastive+crossview: weight of the crossview loss against the variant loss "
        "(default 0.5, in (0, 10])",
    )
    p.add_argument(
        "--input-nm-per-px",
        type=_scale,
        default="auto",
        help="canonical input scale: every clip is resampled from its own nm_per_px to this before the "
        "network, which then sees --input-size x this nm; recorded with the model. 'auto' (default): "
        "the median clip of the data set fills the input (1024 nm clips at 64 px: 16); 'none' = resize "
        "each clip whole (the scale then depends on the clip)",
    )
    p.add_argument(
        "--augment-shift-px",
        type=float,
        default=1.5,
        help="random translation of each view, in px at the input size (default 1.5; zero fill at the "
        "border). Larger window shifts are better taught by data set variants that carry them "
        "(lithowatch dataset make --max-shift-px), which show the layout entering the window",
    )
    p.add_argument(
        "--print-jitter",
        type=float,
        default=1.0,
        help="strength of the print perturbation (blur and re-threshold: focus and dose); 0 = off",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop training after this many minutes (image loading and validation not counted)",
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of groups held out (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: all available cores; on cores busy with other work, 1 thread "
        "can be several times faster)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--recipe", default=None, help="how this model was made (e.g. the command), kept in its metadata"
    )
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    cfg = TrainConfig(
        objective=args.objective,
        arch=args.backbone or ("autoencoder" if args.objective == "autoencoder" else "resnet18-w32"),
        channels=args.channels,
        input_size=args.input_size,
        projection_dim=args.projection_dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        crossview_weight=args.crossview_weight,
        input_nm_per_px=args.input_nm_per_px,
        max_shift_px=args.augment_shift_px,
        print_jitter=args.print_jitter,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=args.device,
        max_minutes=args.max_minutes,
        threads=args.threads,
        descriptor=args.hybrid_weights,
    )
    result = train_encoder(
        args.dataset,
        args.out,
        cfg,
        progress=not args.no_progress,
        eval_dataset=args.eval_dataset,
        recipe=args.recipe,
    )
    meta = result.metadata
    print(f"checkpoint  {result.checkpoint}  ({meta.model_version}, dim {meta.embedding_dim})")
    print(f"loss curve  {result.checkpoint / 'loss_curve.png'}")
    print("metrics     " + json.dumps({k: v for k, v in meta.metrics.items() if k != "eval"}, sort_keys=True))
    if result.eval_table:
        print(f"\non {args.eval_dataset} (layouts never trained on):")
        print(result.eval_table)
    return 0
