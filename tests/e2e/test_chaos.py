"""Chaos: kill -9 every stage again and again while a farm streams; nothing is lost, nothing doubled.

A known stream (re-simulated duplicates and a held-out family included) is published at a
steady rate while stage processes are killed with SIGKILL and restarted. Halfway through,
Redis goes away for a while, and a second dedupe replica joins the group and leaves it
again during the outage (two rebalances while the stage backs off). At the end every
published result is accounted for exactly once: its ``result_id`` is scored or a duplicate,
never both, never in the DLQ. Redeliveries are visible as extra output records; they collapse
on ``result_id`` (at-least-once delivery, idempotent consumers).

``LITHOWATCH_CHAOS_KILLS`` (default 20) sets the number of kills; ``LITHOWATCH_CHAOS_RESULTS``
(default 200) the stream length.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from farm_streams import known_farm, stream_settings

from app.supervisor import Pipeline
from services.simfarm.main import publish
from shared.contracts import AlertRecord, DuplicateRecord, ExplanationRecord, ScoreRecord, SimResult, Topics
from shared.testing import collect

pytestmark = pytest.mark.e2e

STAGES = ("dedupe", "align", "embed", "novelty", "explain")
OUTPUT_MODELS: dict[str, Any] = {
    Topics.SCORES: ScoreRecord,
    Topics.DUPLICATES: DuplicateRecord,
    Topics.ALERTS: AlertRecord,
    Topics.EXPLANATIONS: ExplanationRecord,
}


def kill_plan(kills: int, rng: random.Random) -> list[str]:
    """Each stage at least ``kills // 5`` (and at least 3) times, shuffled."""
    per_stage = max(3, kills // len(STAGES))
    plan = [stage for stage in STAGES for _ in range(per_stage)]
    plan += rng.sample(STAGES, kills - len(plan)) if kills > len(plan) else []
    rng.shuffle(plan)
    return plan


def _ids(records: list[Any], topic: str) -> list[str]:
    model = OUTPUT_MODELS[topic]
    return [str(model.model_validate_json(r.value).result_id) for r in records if r.topic == topic]


def redis_outage_with_a_replica_joining_and_leaving(pipeline: Pipeline, down_seconds: float = 12.0) -> None:
    """Redis down; meanwhile a second dedupe replica joins (a rebalance) and leaves (another).

    Everything is started from this thread: a child dies with the thread that started it.
    """
    pipeline.stack.stop_redis()
    try:
        time.sleep(1.0)
        second = pipeline.start_service("dedupe", replica=1)
        time.sleep(down_seconds / 2)  # joined: partitions moved while both back off
        second.process.stop()  # leaves (SIGTERM) while Redis is still away
        pipeline.services.remove(second)
        pipeline.stack.children.remove(second.process)
        time.sleep(down_seconds / 2)
    finally:
        pipeline.stack.start_redis_again()


def test_kill9_every_stage_mid_stream_loses_nothing(pipeline: Pipeline) -> None:
    kills = int(os.environ.get("LITHOWATCH_CHAOS_KILLS", "20"))
    count = int(os.environ.get("LITHOWATCH_CHAOS_RESULTS", "200"))
    rate_per_second = 2.5
    rng = random.Random(int(os.environ.get("LITHOWATCH_CHAOS_SEED", "7")))
    stack = pipeline.stack
    settings = stream_settings(stack)
    farm = known_farm(settings, seed=11, novel_fraction=0.1, job_id="chaos")
    published: list[str] = []
    labels: dict[str, dict[str, Any]] = {}

    def recorded() -> Iterator[SimResult]:
        for result in farm:
            published.append(result.result_id)
            labels[result.result_id] = dict(result.labels)
            yield result

    publisher = threading.Thread(
        target=publish,
        args=(recorded(), settings, count, rate_per_second),
        kwargs={"progress": False},
        name="chaos-farm",
    )
    plan = kill_plan(kills, rng)
    interval_seconds = (count / rate_per_second) / max(1, len(plan))
    killed: Counter[str] = Counter()
    outage_at = len(plan) // 2
    began = time.monotonic()
    publisher.start()
    try:
        for step, name in enumerate(plan):
            if step == outage_at:
                redis_outage_with_a_replica_joining_and_leaving(pipeline)
            time.sleep(interval_seconds * rng.uniform(0.6, 1.4))
            running = next(s for s in pipeline.services if s.name == name)
            pipeline.restart(running, kill9=True)
            killed[name] += 1
    finally:
        publisher.join()
    pipeline.wait_ready(180)
    expected = set(published)

    seen: dict[str, set[str]] = {topic: set() for topic in OUTPUT_MODELS}
    parsed = 0

    def settled(records: list[Any]) -> bool:
        nonlocal parsed
        for record in records[parsed:]:
            if record.topic in seen:
                seen[record.topic].update(_ids([record], record.topic))
        parsed = len(records)
        if not expected <= seen[Topics.SCORES] | seen[Topics.DUPLICATES]:
            return False
        return seen[Topics.ALERTS] <= seen[Topics.EXPLANATIONS]

    records = collect(stack.bootstrap, [*OUTPUT_MODELS, Topics.DLQ], settled, 300)
    streamed_seconds = time.monotonic() - began
    scored = _ids(records, Topics.SCORES)
    duplicates = _ids(records, Topics.DUPLICATES)
    alerts, explanations = set(_ids(records, Topics.ALERTS)), set(_ids(records, Topics.EXPLANATIONS))
    dlq = [r for r in records if r.topic == Topics.DLQ]
    accounted = set(scored) | set(duplicates)
    lost = expected - accounted
    resims = {rid for rid, lab in labels.items() if lab.get("resim_of")}
    print(
        f"\nchaos: kills per stage {dict(sorted(killed.items()))} ({sum(killed.values())} in all); "
        f"inputs {len(expected)} ({len(resims)} re-simulations); distinct outputs {len(accounted)} "
        f"(scored {len(set(scored))}, duplicates {len(set(duplicates))}); output records "
        f"{len(scored) + len(duplicates)} (redeliveries visible: "
        f"{len(scored) + len(duplicates) - len(accounted)}); alerts {len(alerts)}, explained "
        f"{len(alerts & explanations)}; dlq {len(dlq)}; lost {len(lost)}; {streamed_seconds:.0f} s"
    )
    assert len(published) == count
    assert all(killed[s] >= min(3, kills // len(STAGES)) for s in STAGES), killed
    assert lost == set(), f"lost {len(lost)}: {sorted(lost)[:10]}"
    assert accounted == expected, "outputs for results never published"
    late = {d.result_id for d in (DuplicateRecord.model_validate_json(r.value) for r in records
                                  if r.topic == Topics.DUPLICATES) if d.details.get("late")}
    assert not set(scored) & (set(duplicates) - late), "a result was both scored and a duplicate on arrival"
    assert dlq == []
    assert alerts <= explanations, "an alert was never explained"
