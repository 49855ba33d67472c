"""Observability end to end: a real Prometheus scraping ``lithowatch up`` while the farm streams.

The stack: broker + Redis (EmbeddedStack, library published), ``lithowatch up`` as a process using
them (every stage on its default metrics port, 9101-9105), ``lithowatch simfarm`` on 9106, and
``prometheus`` (Debian package) with a copy of deploy/prometheus/prometheus.local.yml.

What it checks:
- every scrape target of prometheus.local.yml is up;
- a burst of results of the held-out layout family (``sram``) after steady known traffic drives
  LithowatchNoveltyRateHigh to ``firing`` (read from /api/v1/alerts);
- every PromQL query of every panel of the Grafana dashboard returns at least one series with a
  number, through /api/v1/query, with the recording rules loaded. One undecodable message is
  forced onto the results topic so that the dead-letter panels have data; EXEMPT_PANELS lists
  the one panel that is legitimately empty, and the test checks that it is.

Traffic. The steady stream is the farm re-simulating the library's layouts (``simfarm --dataset``):
known results (of its 120, dedupe drops about 75 as shifted re-simulations). A generated stream
(``simfarm`` without ``--dataset``) is not a usable baseline here: every result is a *new* layout,
which the calibrated threshold counts as novel (about 70 % of them with the quick demo's
untrained encoder), and against a baseline above 1/3 "3x the baseline" exceeds 100 %, so the
alert cannot fire by design. The burst is the generated stream restricted to the held-out family.

Rules. The alert rules are the production ones with two changes made programmatically
(prometheus_harness.shorten_rules), because a test cannot wait 5 minutes for ``for:`` nor
10 minutes for the "now" window: the novelty alert's ``for: 5m`` becomes FOR_DURATION and the
novelty rules' 10-minute window becomes NOVELTY_WINDOW. The 1-day baseline window is kept: in
the test it spans the whole run. Names, expressions, thresholds (3x the baseline, 5 % floor,
0.05 decisions/s) and the other alerts are unchanged, and nothing under deploy/ is written.
Because the baseline has no novel decision, the 5 % floor decides when the alert starts; the
burst is kept short (BURST_RESULTS) so that the 1-day share stays under 1/3 and the 3x
comparison still holds while ``for:`` elapses.

The default metrics ports must be free (``lithowatch up`` would quietly move a stage elsewhere);
the test fails naming the taken ports otherwise.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_harness import (
    RULES_DIR,
    Prometheus,
    instant_query_text,
    panel_queries,
    say,
    shorten_rules,
    wait_for,
)

from app.demo.assets import NOVEL_FAMILY, DemoAssets
from app.launcher import ChildProcess, EmbeddedStack
from app.supervisor import port_is_free
from services.novelty.library_cli import build_library
from shared.contracts import Topics
from shared.settings import DEFAULT_METRICS_PORTS, CommonSettings
from shared.testing import produce

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STAGES = ("dedupe", "align", "embed", "novelty", "explain")

NOVELTY_ALERT = "LithowatchNoveltyRateHigh"
FOR_DURATION = "6s"
NOVELTY_WINDOW = "30s"
QUERY_WINDOW = "30s"

# Panels allowed to be empty in this run, with the reason.
EXEMPT_PANELS = {
    "Hybrid duplicate confirmations": (
        "lithowatch_confirmations_total only moves when novelty runs with hybrid duplicate "
        "confirmation (LITHOWATCH_HYBRID_CONFIRM), which is off by default and so under `lithowatch up`"
    ),
}

BASELINE_RATE = 4.0
BASELINE_DECISIONS = 30
BURST_RESULTS = 16
BURST_RATE = 1.0


def scalar(prom: Prometheus, expr: str) -> float:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture
def default_ports_free() -> None:
    busy = [f"{name} {port}" for name, port in DEFAULT_METRICS_PORTS.items() if not port_is_free(port)]
    if busy:
        pytest.fail(
            "metrics ports that prometheus.local.yml scrapes are taken on 127.0.0.1: "
            + ", ".join(busy)
            + " (stop whatever listens there: `lithowatch up` would fall back to other ports)"
        )


@pytest.fixture
def monitored(
    default_ports_free: None, e2e_assets: DemoAssets, tmp_path: Path
) -> Iterator[tuple[EmbeddedStack, Prometheus, dict[str, str], Path]]:
    """Broker + Redis (library published), Prometheus, and `lithowatch up` using both; all stopped after."""
    run_dir = tmp_path / "run"
    stack = EmbeddedStack(workdir=run_dir, partitions=4).start()
    children: list[ChildProcess] = []
    prom = Prometheus(
        tmp_path / "prometheus",
        shorten_rules(
            yaml.safe_load((RULES_DIR / "lithowatch.rules.yml").read_text()),
            {NOVELTY_ALERT},
            FOR_DURATION,
            NOVELTY_WINDOW,
        ),
    )
    try:
        library_settings = CommonSettings(
            kafka_bootstrap=stack.bootstrap, redis_url=stack.redis, blob_root=run_dir / "blobs"
        )
        entries = build_library(library_settings, e2e_assets.library_dir, e2e_assets.model_dir)
        say(f"library published: {entries} entries")
        env = {
            **os.environ,
            "LITHOWATCH_KAFKA_BOOTSTRAP": stack.bootstrap,
            "LITHOWATCH_REDIS_URL": stack.redis,
            "LITHOWATCH_BLOB_ROOT": str(run_dir / "blobs"),
            "LITHOWATCH_MODEL_PATH": str(e2e_assets.model_dir),
            "LITHOWATCH_THRESHOLDS_PATH": str(e2e_assets.thresholds_path),
            "LITHOWATCH_SNAPSHOT_DIR": str(tmp_path / "snapshots"),
            "LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000",
            "LITHOWATCH_SESSION_TIMEOUT_MS": "6000",
            "LITHOWATCH_TORCH_THREADS": "1",
            # the score drift panel needs a full window; the run scores a few dozen results
            "LITHOWATCH_NOVELTY_DRIFT_WINDOW": "20",
            "PYTHONUNBUFFERED": "1",
        }
        prom.start()
        say(f"prometheus at {prom.url}")
        up = ChildProcess(
            "up",
            [sys.executable, "-m", "app.cli", "up", "--workdir", str(run_dir)],
            tmp_path / "up.log",
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        ).start()
        children.append(up)

        def up_ready() -> bool:
            assert up.alive(), f"lithowatch up exited:\n{up.log_tail(60)}"
            return "services ready" in up.log_path.read_text(errors="replace")

        wait_for("lithowatch up to report every service ready", up_ready, 240)
        say("lithowatch up: ready")
        yield stack, prom, env, tmp_path
    finally:
        for child in reversed(children):
            child.stop(timeout_seconds=30)
        prom.stop()
        stack.stop()


def simfarm(env: dict[str, str], log: Path, *args: str) -> ChildProcess:
    return ChildProcess(
        f"simfarm:{log.stem}",
        [sys.executable, "-m", "app.cli", "simfarm", "--quiet", *args],
        log,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    ).start()


def has_value(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (a ratio of two zero rates is NaN: nothing to draw)."""
    return any(math.isfinite(float(series["value"][1])) for series in result)


def decision_counts(prom: Prometheus) -> dict[str, float]:
    return {
        r["metric"].get("decision", "?"): float(r["value"][1])
        for r in prom.query("sum by (decision) (lithowatch_novelty_decisions_total)")
    }


def test_dashboard_has_data_and_novelty_alert_fires(
    monitored: tuple[EmbeddedStack, Prometheus, dict[str, str], Path], e2e_assets: DemoAssets
) -> None:
    stack, prom, env, tmp_path = monitored
    farms: list[ChildProcess] = []
    try:
        # Steady traffic: the farm re-simulating library layouts (known results, some duplicates).
        farms.append(
            simfarm(
                env,
                tmp_path / "farm.log",
                "--dataset",
                str(e2e_assets.library_dir),
                "--rate",
                str(BASELINE_RATE),
            )
        )
        # One message no stage can decode: dedupe dead-letters it (the DLQ panels need one).
        produce(stack.bootstrap, Topics.RESULTS, [("not-a-result", b"{not json")])

        def targets_all_up() -> bool:
            return all(prom.targets_up().get(s, False) for s in (*STAGES, "simfarm"))

        wait_for("every scrape target up", targets_all_up, 60)
        say("all targets up")
        wait_for("the baseline farm to finish", lambda: not farms[0].alive(), 120, 1)
        say(f"baseline farm done: {farms[0].log_tail(2)}")

        def decisions() -> float:
            return sum(decision_counts(prom).values())

        wait_for(f"{BASELINE_DECISIONS} novelty decisions", lambda: decisions() >= BASELINE_DECISIONS, 120, 2)
        say(f"baseline decisions: {decision_counts(prom)}")
        # The burst: the farm now produces layouts of the held-out family only.
        farms.append(
            simfarm(
                env,
                tmp_path / "burst.log",
                "--rate", str(BURST_RATE),
                "--count", str(BURST_RESULTS),
                "--novel-families", NOVEL_FAMILY,
                "--novel-fraction", "1.0",
                "--print-offset-px", "4",
                "--duplicate-fraction", "0.1",
                "--seed", "11",
                "--job-id", "burst",
            )
        )  # fmt: skip

        def novelty_alert_state() -> str:
            states = [a["state"] for a in prom.alerts() if a["labels"].get("alertname") == NOVELTY_ALERT]
            say(
                f"ratio now {scalar(prom, 'lithowatch:novelty_ratio:rate10m'):.3f} "
                f"baseline {scalar(prom, 'lithowatch:novelty_ratio:rate1d'):.3f} "
                f"decisions/s {scalar(prom, 'lithowatch:novelty_decisions:rate10m'):.2f} "
                f"{decision_counts(prom)} alert {states}"
            )
            return states[0] if states else "inactive"

        wait_for(f"{NOVELTY_ALERT} firing", lambda: novelty_alert_state() == "firing", 120, 2)
        say("novelty alert firing")
        # The dashboard's alert table shows it, beside the dead-letter alert the forced DLQ raised.
        firing = {
            series["metric"]["alertname"]
            for title, expr in panel_queries()
            if title == "Firing alerts"
            for series in prom.query(instant_query_text(expr, QUERY_WINDOW))
        }
        assert {NOVELTY_ALERT, "LithowatchDeadLetters"} <= firing, firing

        empty: dict[str, list[str]] = {}

        def every_panel_has_data() -> bool:
            empty.clear()
            for title, expr in panel_queries():
                if title in EXEMPT_PANELS:
                    continue
                if not has_value(prom.query(instant_query_text(expr, QUERY_WINDOW))):
                    empty.setdefault(title, []).append(expr)
            return not empty

        try:
            wait_for("every dashboard panel to return data", every_panel_has_data, 60, 2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; panels without data: {empty}") from None
        say("every panel has data")
        for title, expr in panel_queries():
            if title in EXEMPT_PANELS:
                result = prom.query(instant_query_text(expr, QUERY_WINDOW))
                assert not has_value(result), f"{title} has data now; drop it from EXEMPT_PANELS: {result}"
    finally:
        for farm in farms:
            farm.stop()
