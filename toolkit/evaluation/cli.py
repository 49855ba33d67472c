"""``lithowatch eval {retrieval,novelty,clusters,transfer}``: wiring of :mod:`toolkit.evaluation.commands`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.dataset import Dataset
from shared.errors import ConfigError, ImageError
from shared.index.thresholds import load_thresholds
from toolkit.calibration.cli_common import add_embedding_args, emit, load_embedded, split_values
from toolkit.calibration.data import dataset_labels
from toolkit.calibration.pairs import LabelValue
from toolkit.evaluation import commands, novelty_commands
from toolkit.evaluation.baselines import baseline_features
from toolkit.evaluation.maps import MapMethod
from toolkit.evaluation.novelty import NoveltyScoring
from toolkit.evaluation.retrieval import Metric

NOVELTY_PROTOCOLS: dict[str, tuple[str, ...]] = {
    "groups": ("groups",),
    "within-family": ("within-family",),
    "families": ("families",),
    "both": ("within-family", "families"),
}


def register_eval(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate embeddings: retrieval, novelty, clusters, transfer")
    sub = p.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    r = sub.add_parser("retrieval", help="P@1/5/10 and mAP@R by a label, against pixel and pHash baselines")
    add_embedding_args(r)
    r.add_argument("--label", default="group")
    r.add_argument("--report", default=None)
    r.add_argument("--no-baselines", action="store_true", help="skip the pixel and pHash baselines")
    r.add_argument("--pixel-size", type=int, default=32)
    r.set_defaults(func=run_eval_retrieval)

    n = sub.add_parser("novelty", help="AUROC and P/R of known vs held-out novel results")
    add_embedding_args(n)
    n.add_argument("--label", default="group", help="group label (known queries keep group members)")
    n.add_argument("--report", default=None)
    n.add_argument("--thresholds", default=None, help="thresholds file to judge (default: F1-max)")
    n.add_argument(
        "--protocol",
        choices=tuple(NOVELTY_PROTOCOLS),
        default="groups",
        help="novel queries: groups = a random share of groups (or --holdout-label/--holdout-values); "
        "within-family = a share of the --holdout-within values inside each family (new cells of a known "
        "library); families = each family held out in turn (mean AUROC); both = within-family and families",
    )
    n.add_argument("--holdout-label", default=None, help="with --protocol groups: hold out by this label")
    n.add_argument("--holdout-values", default=None, help="comma-separated values of --holdout-label")
    n.add_argument(
        "--holdout-within",
        default=None,
        help="label held out within each family (default: cell when items carry it, else --label)",
    )
    n.add_argument(
        "--holdout-share",
        type=float,
        default=0.3,
        help="share of the --holdout-within values held out in each family",
    )
    n.add_argument("--family-label", default="family")
    n.add_argument(
        "--no-reconstruction",
        action="store_true",
        help="with an autoencoder checkpoint, skip its reconstruction error as a novelty score",
    )
    n.add_argument("--no-baselines", action="store_true")
    n.add_argument("--pixel-size", type=int, default=32)
    n.set_defaults(func=run_eval_novelty)

    c = sub.add_parser("clusters", help="UMAP and t-SNE maps coloured by a label, with silhouettes")
    add_embedding_args(c)
    c.add_argument("--label", default="family")
    c.add_argument("--report", default=None)
    c.add_argument("--methods", default="umap,tsne", help="comma-separated: umap, tsne")
    c.add_argument("--max-points", type=int, default=3000)
    c.add_argument("--no-baselines", action="store_true")
    c.add_argument("--pixel-size", type=int, default=32)
    c.set_defaults(func=run_eval_clusters)

    t = sub.add_parser("transfer", help="ridge / logistic regression on frozen features vs pixels")
    add_embedding_args(t)
    t.add_argument("--label", default="group", help="group label for group-wise folds ('' for none)")
    t.add_argument("--severity-label", default="severity")
    t.add_argument("--defect-label", default="defect")
    t.add_argument(
        "--all-items-severity",
        action="store_true",
        help="regress severity over every item, not only the defective ones",
    )
    t.add_argument("--folds", type=int, default=5)
    t.add_argument("--report", default=None)
    t.add_argument("--pixel-size", type=int, default=32)
    t.set_defaults(func=run_eval_transfer)


def _report_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.report) if args.report else None


def _feature_sets(
    args: argparse.Namespace, dataset: Dataset, embeddings: np.ndarray
) -> dict[str, tuple[np.ndarray, Metric]]:
    sets: dict[str, tuple[np.ndarray, Metric]] = {"encoder": (embeddings, "cosine")}
    if not getattr(args, "no_baselines", False):
        pixels, hashes = baseline_features(dataset, pixel_size=args.pixel_size, with_phash=True)
        sets[f"pixels{args.pixel_size}"] = (pixels, "cosine")
        if hashes is not None:
            sets["phash"] = (hashes, "hamming")
    return sets


def run_eval_retrieval(args: argparse.Namespace) -> int:
    dataset, embeddings, version = load_embedded(args)
    summary = commands.eval_retrieval(
        _feature_sets(args, dataset, embeddings),
        dataset_labels(dataset),
        label=args.label,
        report_dir=_report_dir(args),
    )
    emit({**summary, "model_version": version, "dataset": str(dataset.root)}, args.json_out)
    return 0


def reconstruction_errors(dataset: Dataset, model: str, *, batch_size: int, device: str) -> np.ndarray | None:
    """Per-item reconstruction error of an autoencoder checkpoint; None for any other encoder."""
    from shared.model import load_encoder  # torch: only when a checkpoint is used

    encoder = load_encoder(model, device=device, batch_size=batch_size)
    if not encoder.is_autoencoder:
        return None
    items = dataset.items
    errors = np.empty(len(items), dtype=np.float64)
    for start in tqdm(range(0, len(items), batch_size), desc="reconstruction error", unit="batch"):
        batch = items[start : start + batch_size]
        try:
            errors[start : start + len(batch)] = encoder.reconstruction_error(
                [item.load_mask() for item in batch],
                [item.load_simulated() for item in batch],
                [item.nm_per_px for item in batch],
            )
        except ImageError as exc:
            raise ConfigError(f"{dataset.root}: items {start}..{start + len(batch) - 1}: {exc}") from exc
    return errors


def default_holdout_within(labels: list[dict[str, LabelValue]], group_label: str) -> str:
    """``cell`` when items carry it (imported real layouts), else the group label."""
    return "cell" if any(row.get("cell") is not None for row in labels) else group_label


def run_eval_novelty(args: argparse.Namespace) -> int:
    protocols = NOVELTY_PROTOCOLS[args.protocol]
    if (args.holdout_label is not None or args.holdout_values is not None) and args.protocol != "groups":
        raise ConfigError(f"--holdout-label/--holdout-values go with --protocol groups, not {args.protocol}")
    if args.holdout_within is not None and "within-family" not in protocols:
        raise ConfigError(f"--holdout-within goes with --protocol within-family or both, not {args.protocol}")
    thresholds = load_thresholds(args.thresholds) if args.thresholds else None
    dataset, embeddings, version = load_embedded(args)
    if thresholds is not None and args.model and thresholds.model_version != version:
        raise ConfigError(
            f"{args.thresholds}: calibrated for model {thresholds.model_version!r}, not {version!r}"
        )
    sets: dict[str, tuple[np.ndarray, NoveltyScoring]] = dict(_feature_sets(args, dataset, embeddings))
    if args.model and not args.no_reconstruction:
        errors = reconstruction_errors(dataset, args.model, batch_size=args.batch_size, device=args.device)
        if errors is not None:
            sets["reconstruction"] = (errors, "precomputed")
    labels = dataset_labels(dataset)
    if args.protocol == "groups":
        summary = novelty_commands.eval_novelty(
            sets,
            labels,
            thresholds=thresholds,
            group_label=args.label,
            holdout_label=args.holdout_label,
            holdout_values=split_values(args.holdout_values),
            seed=args.seed,
            report_dir=_report_dir(args),
        )
    else:
        summary = novelty_commands.eval_novelty_protocols(
            sets,
            labels,
            protocols=protocols,
            thresholds=thresholds,
            group_label=args.label,
            holdout_within=args.holdout_within or default_holdout_within(labels, args.label),
            holdout_share=args.holdout_share,
            family_label=args.family_label,
            seed=args.seed,
            report_dir=_report_dir(args),
        )
    emit({**summary, "model_version": version, "dataset": str(dataset.root)}, args.json_out)
    return 0


def run_eval_clusters(args: argparse.Namespace) -> int:
    methods: list[MapMethod] = []
    for name in (m.strip() for m in args.methods.split(",")):
        if name in ("umap", "tsne"):
            methods.append(name)
    unknown = sorted({m.strip() for m in args.methods.split(",")} - {"umap", "tsne", ""})
    if unknown or not methods:
        raise ConfigError(f"--methods takes umap and/or tsne, got {args.methods!r}")
    dataset, embeddings, version = load_embedded(args)
    baselines = {}
    if not args.no_baselines:
        pixels, _ = baseline_features(dataset, pixel_size=args.pixel_size, with_phash=False)
        baselines[f"pixels{args.pixel_size}"] = pixels
    print(f"[eval] mapping with {', '.join(methods)}", file=sys.stderr, flush=True)
    summary = commands.eval_clusters(
        embeddings,
        dataset_labels(dataset),
        label=args.label,
        baselines=baselines,
        methods=methods,
        max_points=args.max_points,
        seed=args.seed,
        report_dir=_report_dir(args),
    )
    emit({**summary, "model_version": version, "dataset": str(dataset.root)}, args.json_out)
    return 0


def run_eval_transfer(args: argparse.Namespace) -> int:
    dataset, embeddings, version = load_embedded(args)
    pixels, _ = baseline_features(dataset, pixel_size=args.pixel_size, with_phash=False)
    summary = commands.eval_transfer(
        {"encoder": embeddings, f"pixels{args.pixel_size}": pixels},
        dataset_labels(dataset),
        severity_label=args.severity_label,
        defect_label=args.defect_label,
        group_label=args.label or None,
        severity_of_defective_only=not args.all_items_severity,
        n_splits=args.folds,
        seed=args.seed,
        report_dir=_report_dir(args),
    )
    emit({**summary, "model_version": version, "dataset": str(dataset.root)}, args.json_out)
    return 0
