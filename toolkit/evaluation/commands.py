"""The logic of ``lithowatch eval ...``: functions over embeddings, labels and baseline features.

Each returns the JSON summary and, given a report folder, writes its plots and
``index.html`` there. Nothing here loads a model or reads a data set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ConfigError
from toolkit.calibration.pairs import LabelValue
from toolkit.calibration.plots import new_figure, save_figure
from toolkit.calibration.report import Section, Table, write_html_report
from toolkit.evaluation.maps import MapMethod, embedding_maps, silhouette
from toolkit.evaluation.retrieval import KS_DEFAULT, Metric, retrieval_metrics
from toolkit.evaluation.transfer import Task, compare_transfer

FeatureSets = Mapping[str, tuple[np.ndarray, Metric]]
PLOT_KINDS = ("hist", "roc", "pr")
SPLIT_PROTOCOLS = ("groups", "within-family", "families")


def _column(labels: Sequence[Mapping[str, LabelValue]], name: str) -> list[LabelValue]:
    return [row.get(name) for row in labels]


def plot_bars(table: Mapping[str, Mapping[str, float]], path: Path, title: str) -> Path:
    """Grouped bars: one group per metric, one bar per feature set."""
    names = list(table)
    metrics = list(next(iter(table.values())))
    fig, ax = new_figure((7.0, 4.0))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = np.arange(len(metrics)) + i * width
        ax.bar(xs, [table[name][m] for m in metrics], width=width, label=name)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(names) - 1) / 2, metrics, fontsize=8)
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    return save_figure(fig, path)


def eval_retrieval(
    feature_sets: FeatureSets,
    labels: Sequence[Mapping[str, LabelValue]],
    *,
    label: str = "group",
    ks: Sequence[int] = KS_DEFAULT,
    report_dir: Path | None = None,
) -> dict[str, Any]:
    """P@k and mAP@R by ``label`` for every feature set (the encoder first, then baselines)."""
    column = _column(labels, label)
    results = {
        name: retrieval_metrics(feats, column, label_name=label, metric=metric, ks=ks)
        for name, (feats, metric) in feature_sets.items()
    }
    summary: dict[str, Any] = {
        "command": "eval retrieval",
        "label": label,
        "n_items": len(labels),
        "results": {name: r.as_dict() for name, r in results.items()},
    }
    if report_dir is not None:
        rows = [
            {
                "features": name,
                **{f"P@{k}": r.precision_at[k] for k in ks},
                "mAP@R": r.map_at_r,
                "R-precision": r.r_precision,
                "queries": r.n_queries,
                "skipped": r.n_skipped,
                "mean R": r.mean_r,
            }
            for name, r in results.items()
        ]
        bars = {
            name: {**{f"P@{k}": r.precision_at[k] for k in ks}, "mAP@R": r.map_at_r}
            for name, r in results.items()
        }
        plot_bars(bars, report_dir / "retrieval.png", f"retrieval by {label}")
        section = Section(
            f"Retrieval by {label}",
            paragraphs=["Each item queries all others (itself excluded) by cosine (Hamming for pHash)."],
            tables=[Table("retrieval", rows)],
            images=[("retrieval.png", "P@k and mAP@R per feature set")],
        )
        write_html_report(report_dir, "lithowatch eval retrieval", [section], summary)
    return summary


def eval_clusters(
    embeddings: np.ndarray,
    labels: Sequence[Mapping[str, LabelValue]],
    *,
    label: str = "family",
    baselines: Mapping[str, np.ndarray] | None = None,
    methods: Sequence[MapMethod] = ("umap", "tsne"),
    max_points: int = 3000,
    seed: int = 0,
    report_dir: Path | None = None,
) -> dict[str, Any]:
    """Silhouette by ``label`` in embedding space (and of baselines), and 2-D maps."""
    column = _column(labels, label)
    score, maps = embedding_maps(
        embeddings, column, report_dir, label_name=label, methods=methods, max_points=max_points, seed=seed
    )
    baseline_scores = {name: silhouette(feats, column, "cosine") for name, feats in (baselines or {}).items()}
    summary: dict[str, Any] = {
        "command": "eval clusters",
        "label": label,
        "n_mapped": int(maps[0].indices.size) if maps else 0,
        "silhouette_embedding_cosine": score,
        "silhouette_baselines_cosine": baseline_scores,
        "maps": {
            m.method: {"silhouette_2d": m.silhouette_2d, "png": m.png.name if m.png else None} for m in maps
        },
    }
    if report_dir is not None:
        rows = [{"features": "encoder", "silhouette (cosine)": score}]
        rows += [{"features": n, "silhouette (cosine)": s} for n, s in baseline_scores.items()]
        rows += [{"features": f"{m.method} map (2-D)", "silhouette (cosine)": m.silhouette_2d} for m in maps]
        section = Section(
            f"Clusters by {label}",
            paragraphs=["Silhouette in the embedding space is the number to compare; maps only illustrate."],
            tables=[Table("silhouette", rows)],
            images=[(m.png.name, f"{m.method} by {label}") for m in maps if m.png is not None],
        )
        write_html_report(report_dir, "lithowatch eval clusters", [section], summary)
    return summary


def _log1p_or_none(value: LabelValue) -> LabelValue:
    """``log(1 + value)`` of a numeric label above -1; ``None`` for anything else."""
    if value is None or isinstance(value, bool | str):
        return None
    number = float(value)
    return float(np.log1p(number)) if np.isfinite(number) and number > -1.0 else None


def eval_transfer(
    feature_sets: Mapping[str, np.ndarray],
    labels: Sequence[Mapping[str, LabelValue]],
    *,
    severity_label: str = "severity",
    defect_label: str = "defect",
    group_label: str | None = "group",
    severity_of_defective_only: bool = True,
    n_splits: int = 5,
    seed: int = 0,
    report_dir: Path | None = None,
) -> dict[str, Any]:
    """Ridge R^2 on severity and logistic accuracy on defect type, per feature set.

    Tasks: the severity label as it is and as ``log1p`` (areas span two orders of
    magnitude: on the raw scale a few large defects decide R^2); the defect label
    over every item, and over defective items only (over all items "none" is the
    majority and accuracy mostly measures defect detection). By default severity
    is regressed over defective items only (defect label set and not ``"none"``):
    over all items the many zeros of clean results would make "is there a defect"
    the whole of the task. Every feature set gets the same model and folds; each
    result carries its chance level (R^2 0, or the majority class share).
    """
    groups = _column(labels, group_label) if group_label else None
    defects = _column(labels, defect_label)
    defective = [d not in (None, "none") for d in defects]
    severity = _column(labels, severity_label)
    if severity_of_defective_only:
        severity = [v if keep else None for v, keep in zip(severity, defective, strict=True)]
    columns: dict[str, tuple[list[LabelValue], Task]] = {
        severity_label: (severity, "regression"),
        f"log1p({severity_label})": ([_log1p_or_none(v) for v in severity], "regression"),
        defect_label: (defects, "classification"),
        f"{defect_label} (defective only)": (
            [d if keep else None for d, keep in zip(defects, defective, strict=True)],
            "classification",
        ),
    }
    tasks: dict[str, dict[str, Any]] = {}
    for target, (column, task) in columns.items():
        if all(v is None for v in column):
            tasks[target] = {"skipped": f"no item carries a usable {target!r}"}
            continue
        try:
            results = compare_transfer(
                feature_sets, column, task, groups=groups, n_splits=n_splits, seed=seed
            )
        except ConfigError as exc:
            tasks[target] = {"skipped": str(exc)}
            continue
        tasks[target] = {name: r.as_dict() for name, r in results.items()}
    summary: dict[str, Any] = {
        "command": "eval transfer",
        "n_items": len(labels),
        "severity_scope": "defective items only" if severity_of_defective_only else "all items",
        "tasks": tasks,
    }
    if report_dir is not None:
        tables = []
        bars: dict[str, dict[str, float]] = {}
        for target, per_features in tasks.items():
            if "skipped" in per_features:
                continue
            tables.append(Table(target, [{"features": n, **r} for n, r in per_features.items()]))
            for name, result in per_features.items():
                bars.setdefault(name, {})[target] = float(result["mean"])
            bars.setdefault("chance", {})[target] = float(next(iter(per_features.values()))["chance"])
        images = []
        if bars and all(len(v) == len(bars["chance"]) for v in bars.values()):
            plot_bars(bars, report_dir / "transfer.png", "transfer: R^2 (severity), accuracy (defect)")
            images.append(("transfer.png", "cross-validated score per task and feature set, beside chance"))
        section = Section(
            "Transfer to labels the encoder never saw",
            paragraphs=[
                "Light models on frozen features (standardised; ridge with its alpha chosen by "
                "cross-validation, or logistic regression), cross-validated with the same folds for every "
                "feature set; chance = predicting the mean (R^2 0) or the majority class."
            ],
            tables=tables,
            images=images,
        )
        write_html_report(report_dir, "lithowatch eval transfer", [section], summary)
    return summary
