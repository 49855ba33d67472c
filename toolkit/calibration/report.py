"""HTML reports: an ``index.html`` with the numbers and ``<img>`` tags of PNG plots beside it.

Image paths are relative to the report folder, so the folder can be copied or
served as it is. Every text is HTML-escaped.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from toolkit.calibration.plots import plot_pr, plot_roc, plot_score_histograms
from toolkit.calibration.recipe import CalibrationRun

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:0.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
    "text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%;margin:0.4em 0.4em 0 0}figure{display:inline-block;margin:0 1em 1em 0}"
    "pre{background:#f7f7f7;padding:0.8em;overflow-x:auto;font-size:12px}"
)


@dataclass
class Table:
    caption: str
    rows: Sequence[Mapping[str, Any]]


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (path relative to the report, caption)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if value is None:
        return "–"
    return html.escape(str(value))


def _table_html(table: Table) -> str:
    if not table.rows:
        return ""
    columns: list[str] = []
    for row in table.rows:
        columns.extend(c for c in row if c not in columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in table.rows
    )
    return f"<table><caption>{html.escape(table.caption)}</caption><tr>{head}</tr>{body}</table>"


def write_html_report(
    report_dir: str | Path, title: str, sections: Sequence[Section], summary: Mapping[str, Any] | None = None
) -> Path:
    """Write ``report_dir/index.html``; image paths in sections are relative to ``report_dir``."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>written {datetime.now(UTC).isoformat(timespec='seconds')}</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts.extend(f"<p>{html.escape(p)}</p>" for p in section.paragraphs)
        parts.extend(_table_html(t) for t in section.tables)
        for rel, caption in section.images:
            src = html.escape(Path(rel).as_posix(), quote=True)
            parts.append(
                f"<figure><img src='{src}' alt='{html.escape(caption, quote=True)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    if summary is not None:
        text = json.dumps(summary, indent=2, default=str)
        parts.append(f"<h2>Summary (JSON)</h2><pre>{html.escape(text)}</pre>")
    parts.append("</body></html>")
    index = report_dir / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index


def _split_row(name: str, report: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "n_known", "n_novel", "auroc", "threshold", "precision", "recall", "f1", "fpr", "best_f1", "f1_gap",
    )
    return {"split": name, **{k: report.get(k) for k in keys}}


def write_calibration_report(report_dir: str | Path, run: CalibrationRun) -> Path:
    """Histograms, ROC and PR plots of a calibration run, and its numbers."""
    report_dir = Path(report_dir)
    rec = run.recommendation
    marks = {c.method: c.threshold for c in rec.candidates}
    plot_score_histograms(run.novel_cal, run.known_cal, marks, report_dir / "novelty_hist_cal.png",
                          chosen=rec.method)
    plot_score_histograms(run.novel_test, run.known_test, {rec.method: rec.threshold},
                          report_dir / "novelty_hist_test.png", chosen=rec.method)
    plot_roc(run.novel_test, run.known_test, report_dir / "roc_test.png", mark=rec.threshold,
             title="ROC, test split (novel vs known)")
    plot_pr(run.novel_test, run.known_test, report_dir / "pr_test.png", mark=rec.threshold,
            title="precision-recall, test split")
    summary = run.summary
    threshold_section = Section(
        "Threshold",
        paragraphs=[
            f"novelty_score = {run.thresholds.novelty_score}; {run.thresholds.decision}.",
            f"Recommended threshold {rec.threshold:.5f} by {rec.method}. {rec.reason}",
            f"Split: {summary['split']['novel_rule']}; library of {summary['split']['n_library']} items.",
            *(f"Warning: {warning}" for warning in summary.get("warnings", [])),
        ],
        tables=[
            Table("candidates (scored on the calibration split)", [c.model_dump() for c in rec.candidates]),
            Table("chosen threshold on each split (best_f1: the best any threshold reaches there)", [
                _split_row("calibration", summary["calibration_split"]),
                _split_row("test", summary["test_split"]),
            ]),
        ],
        images=[
            ("novelty_hist_cal.png", "novelty scores, calibration split, candidate thresholds"),
            ("novelty_hist_test.png", "novelty scores, test split, chosen threshold"),
            ("roc_test.png", "ROC on the test split"),
            ("pr_test.png", "precision-recall on the test split"),
        ],
    )
    sections = [threshold_section]
    clusters = summary.get("per_cluster", {})
    if "k" in clusters:
        kept = "Kept in the thresholds file." if clusters["kept"] else "Not kept (global threshold used)."
        sections.append(Section(
            "Per-cluster thresholds",
            paragraphs=[
                f"{clusters['k_rule']}; density quantile {clusters['quantile']} chosen on the calibration "
                f"split; thresholds clipped to [{clusters['floor']:.4f}, {clusters['ceiling']:.4f}]. "
                f"{kept}",
            ],
            tables=[Table("F1 with per-cluster thresholds", [{
                "mode": clusters["mode"], "F1 cal (clusters)": clusters["f1_cal"],
                "F1 cal (global)": clusters["f1_cal_global"], "F1 test (clusters)": clusters["f1_test"],
                "F1 test (global)": summary["test_split"]["f1"],
            }]), Table("clusters", [
                {"cluster": i, "size": s, "threshold": t}
                for i, (s, t) in enumerate(zip(clusters["sizes"], clusters["thresholds"], strict=True))
            ])],
        ))
    if run.same_pair_similarity is not None and run.different_pair_similarity is not None:
        plot_score_histograms(
            run.same_pair_similarity, run.different_pair_similarity, {}, report_dir / "pairs_hist.png",
            positive_name="same group", negative_name="different group", xlabel="cosine similarity",
        )
        plot_roc(run.same_pair_similarity, run.different_pair_similarity, report_dir / "pairs_roc.png",
                 title="ROC, same vs different group pairs")
        pairs = summary["pairs"]
        sections.append(Section(
            "Pair similarities in the library",
            paragraphs=[f"{pairs['n_pairs_each']} pairs of each kind; AUROC {pairs['auroc']:.4f}."],
            images=[("pairs_hist.png", "cosine of same-group and different-group pairs"),
                    ("pairs_roc.png", "ROC of pair similarity")],
        ))
    return write_html_report(report_dir, "lithowatch calibration", sections, summary)
