"""``lithowatch calibrate``.

Thin wiring: read the data set, embed it (or read saved embeddings), call the
pure functions of :mod:`toolkit.calibration.recipe`, print the JSON summary, write it
(``--json``) and the HTML report (``--report``). The arguments and output it shares with
``lithowatch eval`` (:mod:`toolkit.evaluation.cli`) are in :mod:`toolkit.calibration.cli_common`.
"""

from __future__ import annotations

import argparse
import sys

from shared.errors import ConfigError
from shared.index.thresholds import save_thresholds
from toolkit.calibration.cli_common import add_embedding_args, emit, load_embedded, split_values
from toolkit.calibration.data import dataset_labels


def progress(message: str) -> None:
    print(f"[calibrate] {message}", file=sys.stderr, flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="choose the novelty threshold from a labelled data set and write a thresholds file",
        description="Split the data set into library, known queries and held-out novel results "
        "(--holdout-label/--holdout-values, or a random share of groups), score every query by "
        "novelty_score = 1 - max cosine similarity to the library, pick the threshold on a "
        "calibration split and report it on a test split.",
    )
    add_embedding_args(p)
    p.add_argument("--out", required=True, help="thresholds file to write (JSON)")
    p.add_argument("--report", default=None, help="folder for index.html and the plots")
    p.add_argument("--group-label", default="group", help="label naming the pattern (default: group)")
    p.add_argument("--holdout-label", default=None, help="label whose values mark the novel results")
    p.add_argument("--holdout-values", default=None, help="comma-separated values of --holdout-label")
    p.add_argument("--query-fraction", type=float, default=0.3, help="share of each known group as queries")
    p.add_argument(
        "--novel-group-fraction",
        type=float,
        default=0.15,
        help="share of groups held out as novel when no --holdout-label is given",
    )
    p.add_argument(
        "--precision-target",
        type=float,
        default=None,
        help="pick the most lenient threshold reaching this precision",
    )
    p.add_argument(
        "--per-cluster",
        choices=("auto", "on", "off"),
        default="auto",
        help="per-cluster thresholds: auto keeps them only when they beat the global one",
    )
    p.add_argument("--clusters", type=int, default=None, help="number of clusters (default: by silhouette)")
    p.add_argument(
        "--near-identity-quantile",
        type=float,
        default=0.01,
        help="hybrid confirmation gate: this quantile of the cosine similarity of two results of "
        "one layout (default 0.01); the data set should hold re-simulations as far apart as the "
        "farm makes them",
    )
    p.add_argument(
        "--feedback",
        default=None,
        metavar="SOURCE",
        help="reviewers' decisions to use as labels: a topic (lithowatch.feedback.v1, where lithowatch "
        "library promote/drop record them) or a JSON-lines file of those records. A promoted entry "
        "counts as known (a reviewer made it part of the reference set: alerting on one like it is a "
        "false alarm); a dropped one as novel (kept out of the reference set, new or noise: one like "
        "it should still alert). They join the calibration split's queries; the latest decision per "
        "entry counts, and only those on vectors of the model being calibrated",
    )
    p.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    from toolkit.calibration.recipe import run_calibration
    from toolkit.calibration.report import write_calibration_report

    if args.precision_target is not None and not 0.0 < args.precision_target <= 1.0:
        raise ConfigError(f"--precision-target must be in (0, 1], got {args.precision_target}")
    dataset, embeddings, model_version = load_embedded(args)
    feedback = None
    if args.feedback:
        from shared.settings import CommonSettings, load_settings
        from toolkit.calibration.feedback import feedback_labels, load_feedback

        settings = load_settings(CommonSettings, getattr(args, "settings_file", None))
        records = load_feedback(args.feedback, settings)
        feedback = feedback_labels(records, model_version, int(embeddings.shape[1]))
        progress(f"feedback: {len(records)} decisions read from {args.feedback}")
    run = run_calibration(
        embeddings,
        dataset_labels(dataset),
        model_version=model_version,
        group_label=args.group_label,
        holdout_label=args.holdout_label,
        holdout_values=split_values(args.holdout_values),
        query_fraction=args.query_fraction,
        novel_group_fraction=args.novel_group_fraction,
        precision_target=args.precision_target,
        per_cluster=args.per_cluster,
        n_clusters=args.clusters,
        near_identity_quantile=args.near_identity_quantile,
        seed=args.seed,
        progress=progress,
        feedback=feedback,
    )
    written = save_thresholds(args.out, run.thresholds)
    summary = {**run.summary, "thresholds_file": str(written), "dataset": str(dataset.root)}
    if args.report:
        progress("writing the report")
        summary["report"] = str(write_calibration_report(args.report, run))
    emit(summary, args.json_out)
    return 0
