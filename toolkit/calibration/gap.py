"""How far the recommended threshold's F1 falls below the best F1 on held-out splits, over seeds.

For each seed the calibration recipe (:func:`toolkit.calibration.recipe.run_calibration`)
splits the data afresh (library, known and novel queries, calibration and test
halves) and picks the threshold on the calibration half. The *gap* of a seed is
the best F1 any threshold reaches on its test half minus the F1 the picked
threshold reaches there. One seed is one draw of a noisy quantity, so the gap is
reported over several: mean, worst, and how many seeds stay within the bar; every
candidate method's gap is reported beside the recommended one's.

One command, embedding the data set once::

    python -m toolkit.calibration.gap --dataset DIR --model CKPT --seeds 20 \\
        [--holdout-label family --holdout-values sram] [--json gap.json] [--report DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ConfigError
from toolkit.calibration.pairs import LabelValue
from toolkit.calibration.roc import confusion_at, sweep

GAP_BAR = 0.02
RECOMMENDED = "recommended"


def _stats(gaps: Sequence[float], bar: float) -> dict[str, Any]:
    values = np.asarray(gaps, dtype=np.float64)
    return {
        "mean_gap": float(values.mean()),
        "worst_gap": float(values.max()),
        "median_gap": float(np.median(values)),
        "within_bar": int((values <= bar).sum()),
        "seeds": int(values.size),
    }


def gap_over_seeds(
    embeddings: np.ndarray,
    labels: Sequence[Mapping[str, LabelValue]],
    seeds: Sequence[int],
    *,
    bar: float = GAP_BAR,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Per-seed and summary F1 gaps of the recommended threshold and of every candidate.

    ``options`` go to :func:`run_calibration` (split rule, fractions, precision
    target); per-cluster thresholds are off, since the gap is the global
    threshold's.
    """
    from toolkit.calibration.recipe import run_calibration

    if not seeds:
        raise ConfigError("no seeds given")
    say = progress or (lambda _msg: None)
    rows: list[dict[str, Any]] = []
    rule = ""
    by_method: dict[str, list[float]] = {}
    for seed in seeds:
        say(f"seed {seed}")
        run = run_calibration(
            embeddings, labels, model_version="gap-sweep", per_cluster="off", seed=seed, **options
        )
        novel, known = run.novel_test, run.known_test
        rule = run.split.novel_rule.split(" (seed")[0]
        best = float(sweep(novel, known).f1.max())
        rec = run.recommendation
        row: dict[str, Any] = {
            "seed": seed,
            "method": rec.method,
            "threshold": rec.threshold,
            "n_novel_cal": int(run.novel_cal.size),
            "n_known_cal": int(run.known_cal.size),
            "n_novel_test": int(novel.size),
            "n_known_test": int(known.size),
            "auroc_test": float(run.summary["test_split"]["auroc"]),
            "best_f1_test": best,
            "f1_test": float(confusion_at(novel, known, rec.threshold)["f1"]),
        }
        row["gap"] = best - row["f1_test"]
        by_method.setdefault(RECOMMENDED, []).append(row["gap"])
        for candidate in rec.candidates:
            if candidate.threshold is None:
                continue
            gap = best - float(confusion_at(novel, known, candidate.threshold)["f1"])
            row[f"gap_{candidate.method}"] = gap
            by_method.setdefault(candidate.method, []).append(gap)
        rows.append(row)
    return {
        "bar": bar,
        "seeds": list(seeds),
        "split": rule,
        "summary": {method: _stats(gaps, bar) for method, gaps in by_method.items()},
        "rows": rows,
    }


def plot_gaps(result: Mapping[str, Any], path: Path, title: str) -> Path:
    """One column of dots per method (one dot per seed), the bar as a dashed line."""
    from toolkit.calibration.plots import new_figure, save_figure

    methods = list(result["summary"])
    fig, ax = new_figure((7.0, 4.0))
    rng = np.random.default_rng(0)
    for i, method in enumerate(methods):
        key = "gap" if method == RECOMMENDED else f"gap_{method}"
        values = [row[key] for row in result["rows"] if key in row]
        xs = i + rng.uniform(-0.12, 0.12, len(values))
        ax.scatter(xs, values, s=14, alpha=0.7, color="C3" if method == RECOMMENDED else "C0")
        ax.plot([i - 0.25, i + 0.25], [np.mean(values)] * 2, color="k", lw=1.5)
    ax.axhline(result["bar"], color="C2", ls="--", lw=1, label=f"bar {result['bar']}")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("best F1 on test split - F1 of the threshold")
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    from toolkit.calibration.cli_common import add_embedding_args, emit, load_embedded, split_values
    from toolkit.calibration.data import dataset_labels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_embedding_args(parser)
    parser.add_argument("--seeds", type=int, default=20, help="how many seeds, from --seed on")
    parser.add_argument("--holdout-label", default=None)
    parser.add_argument("--holdout-values", default=None)
    parser.add_argument("--group-label", default="group")
    parser.add_argument("--query-fraction", type=float, default=0.3)
    parser.add_argument("--novel-group-fraction", type=float, default=0.15)
    parser.add_argument("--bar", type=float, default=GAP_BAR)
    parser.add_argument("--report", default=None, help="folder for index.html and gaps.png")
    args = parser.parse_args(argv)
    dataset, embeddings, version = load_embedded(args)
    result = gap_over_seeds(
        embeddings,
        dataset_labels(dataset),
        list(range(args.seed, args.seed + args.seeds)),
        bar=args.bar,
        group_label=args.group_label,
        holdout_label=args.holdout_label,
        holdout_values=split_values(args.holdout_values),
        query_fraction=args.query_fraction,
        novel_group_fraction=args.novel_group_fraction,
        progress=lambda msg: print(f"[gap] {msg}", file=sys.stderr, flush=True),
    )
    summary = {
        "command": "calibration gap over seeds",
        "model_version": version,
        "dataset": str(dataset.root),
        **result,
    }
    if args.report:
        from toolkit.calibration.report import Section, Table, write_html_report

        report_dir = Path(args.report)
        title = f"F1 gap over {len(result['seeds'])} seeds: {result['split']}"
        plot_gaps(result, report_dir / "gaps.png", title)
        section = Section(
            "F1 gap of the recommended threshold on held-out test splits",
            paragraphs=[
                f"Split: {result['split']}. Each seed re-splits the data; the threshold is chosen on the "
                "calibration half; gap = best F1 on the test half - F1 of the threshold there; "
                f"bar {args.bar}."
            ],
            tables=[
                Table("gap by method", [{"method": m, **s} for m, s in result["summary"].items()]),
                Table("per seed", result["rows"]),
            ],
            images=[("gaps.png", "gap per seed (dots) and mean (line), by method")],
        )
        index = write_html_report(report_dir, "lithowatch calibration gap", [section], summary)
        summary["report"] = str(index)
    emit(summary, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
