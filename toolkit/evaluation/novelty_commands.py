"""``lithowatch eval novelty``: AUROC and P/R of known vs held-out novel results, by protocol
(held-out groups, layouts within a family, whole families), with plots and the HTML report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from shared.index.thresholds import ThresholdsFile
from toolkit.calibration.pairs import LabelValue
from toolkit.calibration.plots import plot_pr, plot_roc, plot_score_histograms
from toolkit.calibration.report import Section, Table, write_html_report
from toolkit.calibration.split import split_for_calibration
from toolkit.evaluation.commands import PLOT_KINDS, SPLIT_PROTOCOLS, plot_bars
from toolkit.evaluation.novelty import (
    NoveltyFeatureSets,
    check_feature_sets,
    held_out_family_scores,
    score_split,
)


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
