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
from shared.index.thresholds import ThresholdsFile
from toolkit.calibration.pairs import LabelValue
from toolkit.calibration.plots import new_figure, plot_pr, plot_roc, plot_score_histograms, save_figure
from toolkit.calibration.report import Section, Table, write_html_report
from toolkit.calibration.split import split_for_calibration
from toolkit.evaluation.maps import MapMethod, embedding_maps, silhouette
from toolkit.evaluation.novelty import (
    NoveltyFeatureSets,
    check_feature_sets,
    held_out_family_scores,
    score_split,
)
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


def _split_protocol_name(holdout_label: str | None, holdout_within: str | None) -> str:
    if holdout_within is not None:
        return "within-family"
    return "groups" if holdout_label is None else "holdout-label"


def _novelty_split(
    feature_sets: NoveltyFeatureSets,
    labels: Sequence[Mapping[str, LabelValue]],
    *,
    thresholds: ThresholdsFile | None,
    group_label: str,
    holdout_label: str | None,
    holdout_values: Sequence[str] | None,
    holdout_within: str | None,
    holdout_share: float,
    family_label: str,
    seed: int,
    report_dir: Path | None,
) -> tuple[dict[str, Any], Section | None]:
    """One split, every feature set scored on it: the summary and (with a report folder) its section."""
    check_feature_sets(feature_sets, len(labels))
    split = split_for_calibration(
        labels,
        group_label=group_label,
        holdout_label=holdout_label,
        holdout_values=holdout_values,
        holdout_within=holdout_within,
        holdout_share=holdout_share,
        family_label=family_label,
        seed=seed,
    )
    protocol = _split_protocol_name(holdout_label, holdout_within)
    scored = score_split(feature_sets, split, thresholds)
    results = {name: s.entry for name, s in scored.items()}
    summary: dict[str, Any] = {
        "command": "eval novelty",
        "protocol": protocol,
        "split": split.describe(),
        "results": results,
    }
    if thresholds is not None:
        summary["thresholds_model_version"] = thresholds.model_version
    if report_dir is None:
        return summary, None
    prefix = "novelty" if protocol != "within-family" else "novelty_within_family"
    for name, s in scored.items():
        mark = float(s.entry["threshold"])
        scoring = feature_sets[name][1]
        plot_score_histograms(
            s.novel,
            s.known,
            {"threshold": mark},
            report_dir / f"{prefix}_hist_{name}.png",
            chosen="threshold",
            xlabel=f"novelty score ({name}, {scoring})",
        )
        plot_roc(s.novel, s.known, report_dir / f"{prefix}_roc_{name}.png", mark=mark, title=f"ROC ({name})")
        plot_pr(s.novel, s.known, report_dir / f"{prefix}_pr_{name}.png", mark=mark, title=f"PR ({name})")
    keys = (
        "policy",
        "auroc",
        "average_precision",
        "threshold",
        "precision",
        "recall",
        "f1",
        "fpr",
        "best_f1",
        "n_known",
        "n_novel",
    )
    table_rows = [{"features": n, **{k: r.get(k) for k in keys}} for n, r in results.items()]
    section = Section(
        f"Novelty ({protocol}): known queries vs held-out novel results",
        paragraphs=[f"Split: {split.novel_rule}; library of {split.library.size} items."],
        tables=[Table("novelty", table_rows)],
        images=[(f"{prefix}_{kind}_{n}.png", f"{kind} ({n})") for n in results for kind in PLOT_KINDS],
    )
    return summary, section


def eval_novelty(
    feature_sets: NoveltyFeatureSets,
    labels: Sequence[Mapping[str, LabelValue]],
    *,
    thresholds: ThresholdsFile | None = None,
    group_label: str = "group",
    holdout_label: str | None = None,
    holdout_values: Sequence[str] | None = None,
    holdout_within: str | None = None,
    holdout_share: float = 0.3,
    family_label: str = "family",
    seed: int = 0,
    report_dir: Path | None = None,
) -> dict[str, Any]:
    """Known vs held-out novel queries against the library of the calibration split recipe.

    Novel queries are a random share of groups (protocol ``groups``), the items
    with ``holdout_label`` in ``holdout_values``, or, with ``holdout_within``, a
    share of that label's values within each family (``within-family``: new
    cells of a known library). The first feature set is the encoder: the
    thresholds file (global or per cluster) applies to it. Other feature sets
    (baselines, precomputed scores such as reconstruction error) get AUROC and
    their own F1-max threshold, which flatters them. Judge a thresholds file on
    a data set it was not calibrated on: with the same data and seed the
    calibration half of the queries is scored again.
    """
    summary, section = _novelty_split(
        feature_sets,
        labels,
        thresholds=thresholds,
        group_label=group_label,
        holdout_label=holdout_label,
        holdout_values=holdout_values,
        holdout_within=holdout_within,
        holdout_share=holdout_share,
        family_label=family_label,
        seed=seed,
        report_dir=report_dir,
    )
    if report_dir is not None and section is not None:
        write_html_report(report_dir, "lithowatch eval novelty", [section], summary)
    return summary


def _novelty_families(
    feature_sets: NoveltyFeatureSets,
    labels: Sequence[Mapping[str, LabelValue]],
    *,
    family_label: str,
    group_label: str,
    seed: int,
    report_dir: Path | None,
) -> tuple[dict[str, Any], Section | None]:
    scored = held_out_family_scores(
        feature_sets, labels, family_label=family_label, group_label=group_label, seed=seed
    )
    summary: dict[str, Any] = {"command": "eval novelty", "protocol": "families", **scored}
    if report_dir is None:
        return summary, None
    done = {f: e["results"] for f, e in scored["families"].items() if "results" in e}
    per_family_rows = [
        {
            family_label: f,
            "n_novel": next(iter(e.values()))["n_novel"],
            **{f"AUROC {n}": e[n]["auroc"] for n in e},
        }
        for f, e in done.items()
    ]
    per_family_rows += [
        {family_label: f, "skipped": e["skipped"]} for f, e in scored["families"].items() if "skipped" in e
    ]
    mean_rows = [{"features": n, **r} for n, r in scored["results"].items()]
    plot_bars(
        {n: {f: r[n]["auroc"] for f, r in done.items()} for n in feature_sets},
        report_dir / "novelty_families_auroc.png",
        f"AUROC with each {family_label} held out",
    )
    section = Section(
        f"Novelty (families): each {family_label} held out in turn",
        paragraphs=[
            f"One {family_label} is novel, the library and the known queries come from the others; "
            "AUROC and average precision per held-out family, then their mean "
            "(thresholds not applied)."
        ],
        tables=[
            Table("mean over held-out families", mean_rows),
            Table("per held-out family", per_family_rows),
        ],
        images=[("novelty_families_auroc.png", f"AUROC per held-out {family_label} and feature set")],
    )
    return summary, section


def eval_novelty_protocols(
    feature_sets: NoveltyFeatureSets,
    labels: Sequence[Mapping[str, LabelValue]],
    *,
    protocols: Sequence[str] = ("within-family", "families"),
    thresholds: ThresholdsFile | None = None,
    group_label: str = "group",
    holdout_within: str = "group",
    holdout_share: float = 0.3,
    family_label: str = "family",
    seed: int = 0,
    report_dir: Path | None = None,
) -> dict[str, Any]:
    """Several protocols side by side: ``table`` is protocol x feature set (AUROC, average precision).

    ``protocols`` are among ``groups``, ``within-family`` and ``families``; each
    one's full summary is under ``protocols``; one report with a section for each.
    """
    unknown = [p for p in protocols if p not in SPLIT_PROTOCOLS]
    if unknown or not protocols:
        raise ConfigError(f"protocols are among {', '.join(SPLIT_PROTOCOLS)}; got {list(protocols)}")
    summaries: dict[str, dict[str, Any]] = {}
    sections: list[Section] = []
    for protocol in protocols:
        if protocol == "families":
            summary, section = _novelty_families(
                feature_sets,
                labels,
                family_label=family_label,
                group_label=group_label,
                seed=seed,
                report_dir=report_dir,
            )
        else:
            summary, section = _novelty_split(
                feature_sets,
                labels,
                thresholds=thresholds,
                group_label=group_label,
                holdout_label=None,
                holdout_values=None,
                holdout_within=holdout_within if protocol == "within-family" else None,
                holdout_share=holdout_share,
                family_label=family_label,
                seed=seed,
                report_dir=report_dir,
            )
        summaries[protocol] = {k: v for k, v in summary.items() if k != "command"}
        if section is not None:
            sections.append(section)
    table = {
        protocol: {n: {k: r[k] for k in ("auroc", "average_precision")} for n, r in s["results"].items()}
        for protocol, s in summaries.items()
    }
    combined: dict[str, Any] = {
        "command": "eval novelty",
        "protocol": "+".join(protocols),
        "table": table,
        "protocols": summaries,
    }
    if report_dir is not None:
        rows = [{"protocol": p, "features": n, **r} for p, per in table.items() for n, r in per.items()]
        plot_bars(
            {n: {p: table[p][n]["auroc"] for p in table} for n in feature_sets},
            report_dir / "novelty_protocols_auroc.png",
            "AUROC per protocol",
        )
        overview = Section(
            "Novelty by protocol",
            paragraphs=[
                "AUROC and average precision of every feature set under every protocol "
                "(families: the mean over held-out families)."
            ],
            tables=[Table("protocol x feature set", rows)],
            images=[("novelty_protocols_auroc.png", "AUROC per protocol and feature set")],
        )
        write_html_report(report_dir, "lithowatch eval novelty", [overview, *sections], combined)
    return combined


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
