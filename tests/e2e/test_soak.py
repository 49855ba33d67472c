"""Soak: a steady stream through every stage; memory stays flat and the pipeline keeps up.

Opt-in: runs when ``LITHOWATCH_SOAK_SECONDS`` is set (CI: 120; a real soak: 600 or more).
Every few seconds it records each service's resident memory (``VmRSS`` from
``/proc/PID/status``), the consumer lag each service exports on ``/metrics`` and the
backlog (published minus accounted). After a warm-up, the slope of a linear fit of
each series must stay under a bound; the slopes are printed. Bounded caches are given a
budget they fill within the warm-up (the dedupe stage's coarse masks: 2 MiB, about 80
results), so what grows after it is not a cache filling to its budget but a leak.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from farm_streams import known_farm, stream_settings

from app.demo.watch import OutputWatcher, metric_sum, scrape
from app.launcher import wait_until
from app.supervisor import Pipeline
from services.simfarm.main import publish
from shared.contracts import SimResult

pytestmark = [pytest.mark.e2e, pytest.mark.soak]

RATE_PER_SECOND = float(os.environ.get("LITHOWATCH_SOAK_RATE", "5"))
SAMPLE_EVERY_SECONDS = 5.0
RSS_SLOPE_BOUND_MB_PER_MIN = 2.0
RSS_GROWTH_FLOOR_MB = 10.0  # short runs: a fit over a minute is noise; allow this much growth in the window


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (``VmRSS``), NaN when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def slope_per_minute(times_seconds: list[float], values: list[float]) -> float:
    t = np.asarray(times_seconds, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(v)
    if keep.sum() < 3:
        return float("nan")
    return float(np.polyfit(t[keep] / 60.0, v[keep], 1)[0])


SOAK_TIMEOUT_SECONDS = int(float(os.environ.get("LITHOWATCH_SOAK_SECONDS", "60"))) + 900


@pytest.fixture
def pipeline_env_extra() -> dict[str, str]:
    """The dedupe stage's cache of coarse masks (128 MiB by default, some 5,000 results, filling at
    about 8 MiB a minute at this rate) made small enough to fill within the warm-up."""
    return {"LITHOWATCH_DEDUPE_COARSE_CACHE_MIB": "2"}


@pytest.mark.skipif("LITHOWATCH_SOAK_SECONDS" not in os.environ, reason="set LITHOWATCH_SOAK_SECONDS to soak")
@pytest.mark.timeout(SOAK_TIMEOUT_SECONDS)
def test_soak_memory_flat_and_lag_bounded(pipeline: Pipeline) -> None:
    duration_seconds = float(os.environ.get("LITHOWATCH_SOAK_SECONDS", "60"))
    # Stores and pools fill for the first minute (the dedupe stage's RSS rises by some 25 MiB over the first
    # 45-60 s at 5 results/s, then stays flat): a run's first half, up to a minute, is warm-up.
    warmup_seconds = min(60.0, duration_seconds / 2)
    count = int(duration_seconds * RATE_PER_SECOND)
    stack = pipeline.stack
    settings = stream_settings(stack)
    farm = known_farm(settings, seed=3, novel_fraction=0.05, job_id="soak")
    published: list[str] = []

    def recorded() -> Iterator[SimResult]:
        for result in farm:
            published.append(result.result_id)
            yield result

    watcher = OutputWatcher(stack.bootstrap).start()
    publisher = threading.Thread(
        target=publish, args=(recorded(), settings, count, RATE_PER_SECOND), kwargs={"progress": False}
    )
    services = list(pipeline.services)
    times: list[float] = []
    rss: dict[str, list[float]] = {s.name: [] for s in services}
    lag: list[float] = []
    backlog: list[float] = []
    began = time.monotonic()
    publisher.start()
    try:
        while publisher.is_alive():
            times.append(time.monotonic() - began)
            for s in services:
                rss[s.name].append(rss_mb(s.process.pid))
            lag.append(sum(metric_sum(scrape(s.metrics_url), "lithowatch_consumer_lag") for s in services))
            backlog.append(len(published) - len(watcher.accounted() & set(published)))
            publisher.join(timeout=SAMPLE_EVERY_SECONDS)
        drained = wait_until(lambda: set(published) <= watcher.accounted(), 180, 0.5)
        drain_seconds = time.monotonic() - began - duration_seconds
        alive = {s.name: s.process.alive() for s in services}
        dlq = len(watcher.dlq)
    finally:
        watcher.stop()

    steady = [i for i, t in enumerate(times) if t >= warmup_seconds]
    window_minutes = (times[steady[-1]] - times[steady[0]]) / 60.0 if len(steady) > 1 else 0.0
    bound = max(RSS_SLOPE_BOUND_MB_PER_MIN, RSS_GROWTH_FLOOR_MB / max(window_minutes, 1e-9))
    st = [times[i] for i in steady]
    slopes = {name: slope_per_minute(st, [series[i] for i in steady]) for name, series in rss.items()}
    lag_slope = slope_per_minute(st, [lag[i] for i in steady])
    backlog_slope = slope_per_minute(st, [backlog[i] for i in steady])
    print(
        f"\nsoak: {len(published)} results in {duration_seconds:.0f} s at {RATE_PER_SECOND}/s; "
        f"{len(times)} samples, {len(steady)} after {warmup_seconds:.0f} s warm-up; drained "
        f"{drain_seconds:.0f} s after the last result; dlq {dlq}"
    )
    for name in rss:
        series = rss[name]
        print(
            f"  {name:8s} RSS {series[0]:7.1f} -> {series[-1]:7.1f} MiB, "
            f"slope {slopes[name]:+.2f} MiB/min (bound {bound:.2f})"
        )
    print(f"  consumer lag (sum) slope {lag_slope:+.2f} msg/min, last {lag[-1]:.0f}, max {max(lag):.0f}")
    print(f"  backlog slope {backlog_slope:+.2f} results/min, last {backlog[-1]}, max {max(backlog)}")
    assert drained, f"{len(set(published) - watcher.accounted())} results never accounted for"
    assert all(alive.values()), alive
    assert dlq == 0
    assert all(s < bound for s in slopes.values()), slopes
    # Keeping up: the backlog grows by less than a tenth of the publish rate.
    assert backlog_slope < 0.1 * RATE_PER_SECOND * 60, backlog_slope
    assert lag_slope < 0.1 * RATE_PER_SECOND * 60, lag_slope
