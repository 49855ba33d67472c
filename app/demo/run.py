"""``lithowatch demo``: broker + Redis, data, encoder, library, thresholds, services, stream, live view."""

from __future__ import annotations

import argparse
import html
import json
import shutil
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.table import Table

from app.demo.assets import DemoAssets, DemoConfig, calibrate, make_datasets, prepare_model
from app.demo.watch import OutputWatcher, metric_sum, scrape
from app.launcher import EmbeddedStack
from app.supervisor import SHARED_HOST_NICE, Pipeline
from shared.blobstore import LocalBlobStore
from shared.dataset import read_dataset
from shared.display import mask_url
from shared.settings import CommonSettings, load_settings

STAGES = ("dedupe", "align", "embed", "novelty", "explain")


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the whole pipeline on generated data, with a live view")
    demo.add_argument("--workdir", type=Path, default=Path(".lithowatch/demo"))
    demo.add_argument("--quick", action="store_true", help="a small run (fewer results)")
    demo.add_argument(
        "--model",
        default=None,
        help="'default' (the shipped model, the default), 'train' (train one on the demo's data), "
        "'untrained' or a checkpoint path",
    )
    demo.add_argument("--rate", type=float, default=0.0, help="results per second (0: as fast as possible)")
    demo.add_argument("--exit", action="store_true", help="stop at the end instead of waiting for Ctrl-C")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--timeout", type=float, default=900.0, help="give up streaming after this many seconds"
    )
    demo.set_defaults(func=cmd_demo)


def _config(args: argparse.Namespace) -> DemoConfig:
    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    cfg = replace(cfg, seed=args.seed)
    if args.model:
        cfg = replace(cfg, model=args.model)
    return cfg


def prepare(cfg: DemoConfig, workdir: Path, console: Console) -> DemoAssets:
    say = lambda message: console.print(f"[bold cyan]▸[/] {message}")  # noqa: E731
    library_dir, stream_dir = make_datasets(cfg, workdir / "data", say)
    model_dir = prepare_model(cfg, library_dir, workdir, say)
    thresholds, report = calibrate(library_dir, model_dir, workdir, say)
    return DemoAssets(library_dir, stream_dir, model_dir, thresholds, report)


def live_table(pipeline: Pipeline, watcher: OutputWatcher, published: int, total: int, began: float) -> Table:
    elapsed = max(1e-6, time.monotonic() - began)
    table = Table(title=f"lithowatch demo — {published}/{total} published, {elapsed:.0f} s", expand=False)
    for column in ("stage", "processed", "per s", "DLQ", "extra"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for running in pipeline.services:
        samples = scrape(running.metrics_url, 0.5)
        ok = metric_sum(samples, "lithowatch_messages_total", stage=running.name, outcome="ok")
        dlq = metric_sum(samples, "lithowatch_messages_total", stage=running.name, outcome="dlq")
        extra = ""
        if running.name == "dedupe":
            extra = f"duplicates {len(watcher.duplicates)}"
        elif running.name == "novelty":
            decisions = [s.decision for s in watcher.scores.values()]
            extra = " ".join(f"{d} {decisions.count(d)}" for d in ("known", "novel", "provisional"))
        elif running.name == "embed":
            extra = f"{metric_sum(samples, 'lithowatch_embed_images_per_second'):.0f} img/s"
        table.add_row(running.name, f"{ok:.0f}", f"{ok / elapsed:.1f}", f"{dlq:.0f}", extra)
    for alert in list(watcher.alerts.values())[-4:]:
        panel = watcher.explanations.get(alert.result_id)
        where = panel.panel.uri if panel else "rendering…"
        table.add_row(
            "[red]alert[/]",
            alert.result_id[:28],
            f"{alert.novelty_score:.3f}",
            "",
            f"{alert.labels.get('family', '')} {where}",
        )
    return table


def pair_merged(rid: str, labels: dict[str, Any], watcher: OutputWatcher) -> bool:
    """A re-simulation and its source were merged, in either order (partitions may reorder them)."""
    source = str(labels.get("resim_of", ""))
    if rid in watcher.duplicates:
        return True
    reverse = watcher.duplicates.get(source)
    return reverse is not None and reverse.duplicate_of == rid


def explain_duplicates(
    stream_labels: dict[str, dict[str, Any]],
    watcher: OutputWatcher,
    library_labels: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every duplicate counted, by what it was a duplicate of: the re-simulation the stream planted,
    another result of the same layout (a variant within the dedupe tolerances, e.g. a burst of one
    novel layout), or a different layout (a wrong merge, listed by id)."""
    known_labels = {**(library_labels or {}), **stream_labels}
    kinds = {"re-simulation": 0, "same layout": 0, "different layout": 0, "unknown original": 0}
    wrong: list[str] = []
    for rid, record in watcher.duplicates.items():
        mine = stream_labels.get(rid, {})
        original = known_labels.get(record.duplicate_of)
        if mine.get("resim_of") == record.duplicate_of or (original or {}).get("resim_of") == rid:
            kinds["re-simulation"] += 1
        elif original is None:
            kinds["unknown original"] += 1
            wrong.append(f"{rid} -> {record.duplicate_of}")
        elif mine.get("group") is not None and mine.get("group") == original.get("group"):
            kinds["same layout"] += 1
        else:
            kinds["different layout"] += 1
            wrong.append(f"{rid} -> {record.duplicate_of}")
    return {"by_kind": kinds, "unexplained": sorted(wrong)}


def summarise(
    stream_labels: dict[str, dict[str, Any]],
    watcher: OutputWatcher,
    library_labels: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    expected = {rid: str(labels.get("expected")) for rid, labels in stream_labels.items()}
    known = [rid for rid, e in expected.items() if e == "known"]
    novel = [rid for rid, e in expected.items() if e == "novel"]
    dups = [rid for rid, e in expected.items() if e == "duplicate"]
    flagged = {rid for rid, s in watcher.scores.items() if s.decision in ("novel", "provisional")}
    novel_groups = {str(stream_labels[rid].get("group")) for rid in novel}
    alerted_groups = {
        str(stream_labels[a.result_id].get("group"))
        for a in watcher.alerts.values()
        if a.result_id in stream_labels
    }
    scored = [rid for rid in known + novel if rid in watcher.scores]
    auroc = None
    if any(r in novel for r in scored) and any(r in known for r in scored):
        auroc = float(
            roc_auc_score([r in novel for r in scored], [watcher.scores[r].novelty_score for r in scored])
        )
    return {
        "results": len(expected),
        "accounted": len(set(expected) & watcher.accounted()),
        "duplicates_expected": len(dups),
        "duplicates_caught": sum(1 for rid in dups if pair_merged(rid, stream_labels[rid], watcher)),
        "duplicates_by_method": {
            m: sum(1 for d in watcher.duplicates.values() if d.method == m)
            for m in sorted({d.method for d in watcher.duplicates.values()})
        },
        "duplicates_explained": explain_duplicates(stream_labels, watcher, library_labels),
        "known_results": len(known),
        "known_flagged": len(set(known) & flagged),
        # what a flagged known variant was: its process conditions against the library's variants
        "known_flagged_detail": {
            rid: {
                "score": round(watcher.scores[rid].novelty_score, 4),
                "threshold": round(watcher.scores[rid].threshold, 4),
                **{k: stream_labels[rid].get(k) for k in ("family", "dose", "defocus_nm", "bias_nm")},
            }
            for rid in sorted(set(known) & flagged)
        },
        "novel_results": len(novel),
        "novel_flagged": len(set(novel) & flagged),
        "novel_family_layouts": len(novel_groups),
        "novel_family_layouts_alerted": len(novel_groups & alerted_groups),
        "held_out_family_found": bool(novel_groups & alerted_groups),
        "alerts": len(watcher.alerts),
        "explanations": len(watcher.explanations),
        "dlq": len(watcher.dlq),
        "novelty_auroc_known_vs_novel_family": auroc,
    }


def write_alerts_page(
    out_dir: Path, watcher: OutputWatcher, store: LocalBlobStore, summary: dict[str, Any]
) -> Path:
    panels = out_dir / "panels"
    panels.mkdir(parents=True, exist_ok=True)
    rows = []
    for alert in watcher.alerts.values():
        explanation = watcher.explanations.get(alert.result_id)
        link = ""
        if explanation is not None and explanation.panel.uri is not None:
            name = explanation.panel.uri.removeprefix("blob://")
            (panels / name).write_bytes(store.get(explanation.panel.uri))
            link = (
                f"<a href='panels/{html.escape(name)}'><img src='panels/{html.escape(name)}' width='720'></a>"
            )
        nearest = alert.neighbours[0] if alert.neighbours else None
        family = html.escape(str(alert.labels.get("family", "")))
        near = f"{html.escape(nearest.id)} {nearest.similarity:.3f}" if nearest else ""
        rows.append(
            f"<tr><td>{html.escape(alert.result_id)}</td><td>{family}</td>"
            f"<td>{alert.novelty_score:.3f} / {alert.threshold:.3f}</td><td>{near}</td><td>{link}</td></tr>"
        )
    page = out_dir / "alerts.html"
    header = "".join(
        f"<th>{h}</th>" for h in ("result", "family", "novelty / threshold", "nearest known", "panel")
    )
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>lithowatch demo alerts</title>"
        "<style>body{font-family:sans-serif}td{padding:4px 8px;border-bottom:1px solid #ddd}</style>"
        f"</head><body><h1>lithowatch demo: {len(rows)} alerts</h1>"
        f"<pre>{html.escape(json.dumps(summary, indent=2))}</pre><table><tr>{header}</tr>"
        + "\n".join(rows)
        + "</table></body></html>\n"
    )
    return page


def cmd_demo(args: argparse.Namespace) -> int:
    from services.simfarm.core import replay
    from services.simfarm.main import publish

    console = Console()
    cfg = _config(args)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    console.rule("lithowatch demo")
    # a broker or Redis the settings name is used as it is (nothing is started for it)
    user = load_settings(CommonSettings, args.settings_file, connection=False)
    stack = EmbeddedStack.from_settings(user, workdir / "run", blob_root=workdir / "run" / "blobs")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    stack.start()
    pipeline = Pipeline(stack, default_ports=True, nice=SHARED_HOST_NICE)
    watcher: OutputWatcher | None = None
    try:
        broker = "embedded" if stack.embedded_broker else "external"
        redis = "embedded" if stack.embedded_redis else "external"
        console.print(
            f"[bold cyan]▸[/] broker {stack.bootstrap} ({broker}), Redis {mask_url(stack.redis)} ({redis}), "
            f"{stack.partitions} partitions, logs {stack.workdir / 'logs'}"
        )
        assets = prepare(cfg, workdir, console)
        settings = user.model_copy(
            update={
                "kafka_bootstrap": stack.bootstrap,
                "redis_url": SecretStr(stack.redis),
                "blob_root": stack.blobs,
                "partitions": stack.partitions,
            }
        )
        watcher = OutputWatcher(settings)  # the user's settings: an external broker's security too
        from services.novelty.library_cli import build_library

        count = build_library(settings, assets.library_dir, assets.model_dir)
        console.print(f"[bold cyan]▸[/] library: {count} reference entries published")
        pipeline.service_env = {
            "LITHOWATCH_MODEL_PATH": str(assets.model_dir),
            "LITHOWATCH_THRESHOLDS_PATH": str(assets.thresholds_path),
            "LITHOWATCH_SNAPSHOT_DIR": str(workdir / "snapshots"),
            "LITHOWATCH_MAX_POLL_INTERVAL_MS": "10000",
            "LITHOWATCH_TORCH_THREADS": "1",
        }
        if args.settings_file:  # the services read the same file (the stack's addresses still win)
            pipeline.service_env["LITHOWATCH_SETTINGS_FILE"] = str(Path(args.settings_file).resolve())
        pipeline.start_all(list(STAGES))
        ready = pipeline.wait_ready(240)
        console.print(f"[bold cyan]▸[/] {len(STAGES)} services ready in {ready:.1f} s")
        watcher.start()
        stream = read_dataset(assets.stream_dir)
        labels = {item.id: dict(item.labels) for item in stream.items}
        published = [0]

        def feed() -> None:
            published[0] = publish(
                replay(stream, "demo", LocalBlobStore(settings.blob_root)),
                settings,
                rate=args.rate,
                progress=False,
            )

        feeder = threading.Thread(target=feed, name="demo-farm", daemon=True)
        stream_began = time.monotonic()
        feeder.start()
        with Live(
            live_table(pipeline, watcher, 0, len(labels), stream_began), console=console, refresh_per_second=2
        ) as live:
            while not stopping.is_set():
                for revived in pipeline.revive(lambda message: console.print(f"[bold red]▸[/] {message}")):
                    pipeline.wait_ready(240, [revived])
                live.update(live_table(pipeline, watcher, published[0], len(labels), stream_began))
                done = set(labels) <= watcher.accounted()
                rendered = len(watcher.explanations) >= len(watcher.alerts)
                if (done and rendered) or time.monotonic() - stream_began > args.timeout:
                    break
                time.sleep(0.5)
        stream_seconds = time.monotonic() - stream_began
        library_labels = {item.id: dict(item.labels) for item in read_dataset(assets.library_dir).items}
        summary = summarise(labels, watcher, library_labels)
        summary.update(
            stream_seconds=round(stream_seconds, 1),
            total_seconds=round(time.monotonic() - began, 1),
            model=str(assets.model_dir),
            thresholds=str(assets.thresholds_path),
        )
        page = write_alerts_page(workdir / "report", watcher, LocalBlobStore(settings.blob_root), summary)
        (workdir / "report" / "summary.json").write_text(json.dumps(summary, indent=2))
        console.print_json(json.dumps(summary))
        console.print(f"[bold green]alerts page:[/] {page}")
        console.print(f"[bold green]calibration report:[/] {assets.calibration_report}")
        if not args.exit:
            console.print("metrics: " + "  ".join(f"{r.name} {r.metrics_url}" for r in pipeline.services))
            console.print("Ctrl-C to stop")
            signal.signal(signal.SIGINT, lambda *_: stopping.set())
            while not stopping.is_set():
                time.sleep(0.5)
        return 0 if summary["accounted"] == summary["results"] else 1
    finally:
        if watcher is not None:
            watcher.stop()
        pipeline.stop()
        stack.stop()
        shutil.rmtree(stack.workdir / "kafka", ignore_errors=True)
