"""Train an encoder on a data set folder and write a checkpoint.

The data set is split by ``group`` (whole layouts go to one side); training runs
for ``epochs`` or until ``max_minutes``, whichever comes first; the held-out groups
then measure precision at 5 by ``group`` (cosine, self excluded) for the trained
network *and* for the same network at initialisation, and both figures go into the
checkpoint metadata. With the same seed and no time limit hit, two runs give the
same weights (CPU).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from shared.dataset import Dataset, read_dataset
from shared.errors import ConfigError
from shared.model.checkpoint import CheckpointMetadata, save_encoder
from shared.model.descriptors import DescriptorSpec
from shared.model.encoder import Encoder, EncoderSpec, resolve_device
from shared.model.nets import ARCHS, ConvAutoEncoder, ResNetEmbedder, build_net
from shared.model.preprocess import check_input_size, default_normalisation, parse_channels
from toolkit.training.data import TrainingSet, dataset_fingerprint, load_training_set, split_by_group
from toolkit.training.evaluate import precision_at_k
from toolkit.training.objectives import (
    AutoencoderObjective,
    ContrastiveCrossViewObjective,
    ContrastiveObjective,
    CrossViewObjective,
    SupervisedObjective,
    TrainingObjective,
    Views,
)
from toolkit.training.plots import write_loss_curve

DatasetDirs = str | Path | Sequence[str | Path]
TRAIN_OBJECTIVES: tuple[str, ...] = (
    "supervised",
    "contrastive",
    "crossview",
    "contrastive+crossview",
    "autoencoder",
)
MAX_CROSSVIEW_WEIGHT = 10.0


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (recorded in the checkpoint)."""

    objective: str = "contrastive"
    arch: str = "resnet18-w32"
    channels: str = "mask,print"
    input_size: int = 64
    projection_dim: int = 0
    epochs: int = 5
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    crossview_weight: float = 0.5
    # canonical input scale (nm per input px); "auto": the data set's median clip extent / input
    # size, recorded as a number; None: resize each clip whole (legacy)
    input_nm_per_px: float | Literal["auto"] | None = None
    descriptor: DescriptorSpec | None = None  # the saved model's vector: learned + fixed descriptors
    max_shift_px: float = 1.5
    print_jitter: float = 1.0
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    max_minutes: float | None = None
    threads: int | None = None

    def check(self) -> None:
        if self.objective not in TRAIN_OBJECTIVES:
            raise ConfigError(
                f"objective must be one of {', '.join(TRAIN_OBJECTIVES)}, not {self.objective!r}"
            )
        if self.arch not in ARCHS:
            raise ConfigError(f"backbone must be one of {', '.join(ARCHS)}, not {self.arch!r}")
        if (self.objective == "autoencoder") != (self.arch == "autoencoder"):
            raise ConfigError("the autoencoder objective goes with --backbone autoencoder (and only it)")
        parse_channels(self.channels)
        check_input_size(self.input_size)
        if self.epochs < 1 or self.batch_size < 4:
            raise ConfigError("--epochs must be >= 1 and --batch-size >= 4")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError("--max-minutes must be positive")
        if not self.lr > 0 or not self.temperature > 0:
            raise ConfigError("learning rate and temperature must be positive")
        scale = self.input_nm_per_px
        if scale is not None and scale != "auto" and not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"--input-nm-per-px must be a positive number, 'auto' or 'none', got {scale!r}")
        if not 0.0 < self.crossview_weight <= MAX_CROSSVIEW_WEIGHT:
            raise ConfigError(f"--crossview-weight must lie in (0, {MAX_CROSSVIEW_WEIGHT:g}]")
        if not 0.0 <= self.max_shift_px <= self.input_size / 4:
            raise ConfigError(f"--augment-shift-px must lie in [0, {self.input_size / 4:g}] (input / 4)")
        if not 0.0 <= self.print_jitter <= 2.0:
            raise ConfigError("--print-jitter must lie in [0, 2]")


@dataclass
class TrainResult:
    encoder: Encoder
    metadata: CheckpointMetadata
    checkpoint: Path
    losses: list[float] = field(default_factory=list)
    eval_table: str = ""


def _make_objective(cfg: TrainConfig, net: torch.nn.Module, views: Views) -> TrainingObjective:
    if cfg.objective == "contrastive":
        return ContrastiveObjective(views, net, temperature=cfg.temperature)
    if cfg.objective == "crossview":
        return CrossViewObjective(views, net, temperature=cfg.temperature)
    if cfg.objective == "contrastive+crossview":
        return ContrastiveCrossViewObjective(
            views, net, temperature=cfg.temperature, crossview_weight=cfg.crossview_weight
        )
    if cfg.objective == "supervised":
        if not isinstance(net, ResNetEmbedder):
            raise ConfigError("the supervised objective needs a ResNet backbone")
        return SupervisedObjective(views, net)
    if not isinstance(net, ConvAutoEncoder):
        raise ConfigError("the autoencoder objective needs --backbone autoencoder")
    return AutoencoderObjective(views, net)


def _lr_factor(progress: float, warmup: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to 5 % of the base rate."""
    if progress < warmup:
        return (progress + 1e-3) / warmup
    t = min(1.0, (progress - warmup) / (1.0 - warmup))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))


def auto_input_scale(dataset: Dataset, input_size: int, sample: int = 64) -> float:
    """The canonical scale at which the data set's median clip fills the input (nm per input px)."""
    items = dataset.items[:: max(1, len(dataset.items) // sample)][:sample]
    if not items:
        raise ConfigError(f"{dataset.root}: no items")
    extents = [max(item.load_mask().shape) * item.nm_per_px for item in items]
    return round(float(np.median(extents)) / input_size, 4)


def evaluate_groups(encoder: Encoder, data: TrainingSet, k: int = 5) -> float:
    """Precision at ``k`` by group over ``data`` (already at the input size)."""
    scales = None if encoder.nm_per_px is None else [encoder.nm_per_px] * len(data)  # already resampled
    vectors = encoder.embed(list(data.masks), list(data.prints), nm_per_px=scales)
    return precision_at_k(vectors, data.groups.tolist(), k=k)


def train_encoder(
    dataset_dir: DatasetDirs,
    out: str | Path,
    cfg: TrainConfig,
    progress: bool = True,
    eval_dataset: str | Path | None = None,
    recipe: str | None = None,
) -> TrainResult:
    """Load, split, train, validate, save. Returns the trained encoder and its metadata.

    Runs with ``cfg.threads`` torch threads (default: every available core) and
    restores the caller's thread count afterwards.
    """
    cfg.check()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or available_cores())
    try:
        return _train(dataset_dir, out, cfg, progress, eval_dataset, recipe)
    finally:
        torch.set_num_threads(threads_before)


def _as_dirs(dataset_dirs: DatasetDirs) -> list[Path]:
    return [Path(dataset_dirs)] if isinstance(dataset_dirs, str | Path) else [Path(d) for d in dataset_dirs]


def read_datasets(dataset_dirs: DatasetDirs) -> Dataset:
    """One data set or several read as one (items keep their own folders; ids must not collide)."""
    dirs = _as_dirs(dataset_dirs)
    if not dirs:
        raise ConfigError("no training data set given")
    parts = [read_dataset(d) for d in dirs]
    if len(parts) == 1:
        return parts[0]
    items = tuple(item for part in parts for item in part.items)
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"the data sets {', '.join(map(str, dirs))} share item ids: rename one of them")
    return Dataset(parts[0].root, items)


def _train(
    dataset_dirs: DatasetDirs,
    out: str | Path,
    cfg: TrainConfig,
    progress: bool,
    eval_dataset: str | Path | None,
    recipe: str | None,
) -> TrainResult:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dirs = _as_dirs(dataset_dirs)
    dataset = read_datasets(dirs)
    dataset_dir = ", ".join(map(str, dirs))
    if cfg.input_nm_per_px == "auto":
        cfg = replace(cfg, input_nm_per_px=auto_input_scale(dataset, cfg.input_size))
    assert cfg.input_nm_per_px != "auto"
    full = load_training_set(dataset, cfg.input_size, progress=progress, nm_per_px=cfg.input_nm_per_px)
    train_idx, val_idx = split_by_group(full.groups, cfg.val_fraction, cfg.seed)
    train_set = full.subset(train_idx)
    if len(train_set) < 2:
        raise ConfigError(f"{dataset_dir}: needs at least 2 training items after the validation split")
    channels = parse_channels(cfg.channels)
    mean, std = default_normalisation(channels)
    spec = EncoderSpec(
        cfg.arch, channels, cfg.input_size, mean, std, cfg.projection_dim, cfg.objective, cfg.input_nm_per_px
    )
    net = build_net(cfg.arch, len(channels), cfg.input_size, cfg.projection_dim)
    net = net.to(memory_format=torch.channels_last)  # ~25 % faster convolutions on CPU
    untrained_state = {k: v.clone() for k, v in net.state_dict().items()}
    device = resolve_device(cfg.device)
    views = Views(train_set, channels, mean, std, cfg.max_shift_px, cfg.print_jitter, device=device)
    objective = _make_objective(cfg, net, views).to(device)
    optimiser = torch.optim.AdamW(objective.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(objective.batches(cfg.batch_size, np.random.default_rng(0))))
    total_steps = steps_per_epoch * cfg.epochs
    budget_seconds = cfg.max_minutes * 60.0 if cfg.max_minutes else None
    losses: list[float] = []
    started = time.perf_counter()
    stopped_by_time = False
    objective.train()
    bar = tqdm(total=total_steps, desc=f"train {cfg.objective}", unit="step", disable=not progress)
    step = 0
    for _epoch in range(cfg.epochs):
        for batch in objective.batches(cfg.batch_size, rng):
            elapsed = time.perf_counter() - started
            if budget_seconds is not None and elapsed >= budget_seconds:
                stopped_by_time = True
                break
            prog = step / total_steps
            if budget_seconds is not None:
                prog = max(prog, elapsed / budget_seconds)
            for group in optimiser.param_groups:
                group["lr"] = cfg.lr * _lr_factor(prog)
            loss, parts = objective.loss(batch, gen)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
        if stopped_by_time:
            break
    bar.close()
    train_seconds = time.perf_counter() - started
    learned = Encoder(net, spec, device=device)
    encoder = learned if cfg.descriptor is None else learned.with_descriptor(cfg.descriptor)
    metrics: dict[str, Any] = {
        "train_steps": step,
        "train_seconds": round(train_seconds, 2),
        "final_loss": losses[-1] if losses else None,
        "stopped_by_time_limit": int(stopped_by_time),
    }
    if len(val_idx):
        val_set = full.subset(val_idx)
        baseline_net = build_net(cfg.arch, len(channels), cfg.input_size, cfg.projection_dim)
        baseline_net.load_state_dict(untrained_state)
        baseline = Encoder(
            baseline_net,
            EncoderSpec(
                cfg.arch,
                channels,
                cfg.input_size,
                mean,
                std,
                cfg.projection_dim,
                "untrained",
                cfg.input_nm_per_px,
            ),
            device=device,
        )
        metrics.update(
            {
                "val_items": len(val_set),
                "val_groups": int(np.unique(val_set.groups).size),
                "val_p_at_5": _rounded(evaluate_groups(encoder, val_set)),
                "val_p_at_5_learned": _rounded(evaluate_groups(learned, val_set)),
                "val_p_at_5_untrained": _rounded(evaluate_groups(baseline, val_set)),
            }
        )
    eval_table = ""
    if eval_dataset is not None:
        metrics["eval"], eval_table = _evaluate_on(eval_dataset, encoder, learned, progress)
    training_record = {
        "dataset": [_recorded_path(d) for d in dirs],
        "dataset_fingerprint": dataset_fingerprint(dataset),
        "items": len(full),
        "train_items": len(train_set),
        "train_groups": int(np.unique(train_set.groups).size),
        "families": sorted({str(f) for f in dataset.labels_of("family") if f is not None}),
        "config": asdict(cfg),
        "threads": torch.get_num_threads(),
    }
    if recipe:
        training_record["recipe"] = recipe
    out_dir = Path(out)
    meta = save_encoder(
        encoder, out_dir, {"objective": cfg.objective, "training": training_record, "metrics": metrics}
    )
    encoder.model_version = meta.model_version
    encoder.metadata = meta
    write_loss_curve(losses, out_dir / "loss_curve.png", title=f"{cfg.arch} {cfg.objective}")
    return TrainResult(
        encoder=encoder, metadata=meta, checkpoint=out_dir, losses=losses, eval_table=eval_table
    )


def _evaluate_on(
    eval_dataset: str | Path, encoder: Encoder, learned: Encoder, progress: bool
) -> tuple[dict[str, Any], str]:
    """The table on layouts never trained on: this model's vector, its parts, the baselines."""
    from toolkit.evaluation.verdict import compare_embeddings, embed_with, format_table, verdict

    dataset = read_dataset(eval_dataset)
    candidates = {"this model": encoder}
    descriptor = encoder.spec.descriptor
    if descriptor is not None:
        candidates["learned part alone"] = learned
        if descriptor.pixel_weight > 0 or descriptor.spectral_weight > 0:
            candidates["descriptors alone"] = learned.with_descriptor(
                descriptor.model_copy(update={"learned_weight": 0.0})
            )
    rows, details = compare_embeddings(dataset, embed_with(candidates, dataset, progress), progress=progress)
    lines = verdict(rows)
    table = format_table(rows) + "\n" + "\n".join(lines)
    return {
        "dataset": _recorded_path(Path(eval_dataset)),
        **details,
        "rows": [r.as_dict() for r in rows],
        "verdict": lines,
    }, table


def _recorded_path(path: Path) -> str:
    """A data set's path for the checkpoint: relative to the working folder when inside it."""
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)
