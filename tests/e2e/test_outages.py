"""Outages of a dependency mid-stream: the stage pauses, resumes, and nothing is lost or misrouted.

Redis (the dedupe state) is stopped for 10 s while a farm streams re-simulations of
earlier results. The embedded Redis runs with an append-only file, so what dedupe
knew before the outage is still there after it: re-simulations published after the
outage of results seen before it are still caught, and new layouts stay unique.

(The other outage, an output topic that cannot be written, is proven with honest fakes
in tests/unit/test_runtime_policy.py: the broker cannot drop one topic on demand.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.demo.assets import KNOWN_FAMILIES
from app.launcher import EmbeddedStack
from app.supervisor import Pipeline
from services.dedupe.core import DedupeCore, DedupeSettings
from services.dedupe.store_memory import InMemoryDedupeStore
from services.simfarm.core import FarmSettings, FarmStream
from services.simfarm.main import publish
from shared.blobstore import LocalBlobStore
from shared.contracts import DuplicateRecord, SimResult, Topics, UniqueResult
from shared.imageref import ImageLoader
from shared.settings import CommonSettings
from shared.testing import collect

pytestmark = pytest.mark.e2e

COUNT = 160
RATE_PER_SECOND = 4.0
OUTAGE_AT_SECONDS = 8.0
OUTAGE_SECONDS = 10.0


def clusters(ids: set[str], edges: dict[str, str]) -> set[frozenset[str]]:
    """Groups of results merged as duplicates of each other (union-find over ``duplicate_of``)."""
    parent = {rid: rid for rid in ids}

    def root(rid: str) -> str:
        while parent.setdefault(rid, rid) != rid:
            rid = parent[rid]
        return rid

    for rid, of in edges.items():
        parent[root(rid)] = root(of)
    groups: dict[str, set[str]] = {}
    for rid in ids:
        groups.setdefault(root(rid), set()).add(rid)
    return {frozenset(g) for g in groups.values()}


def test_redis_outage_pauses_dedupe_and_loses_or_misroutes_nothing(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    settings = CommonSettings(kafka_bootstrap=stack.bootstrap, blob_root=stack.workdir / "blobs")
    farm = FarmStream(
        FarmSettings(seed=5, families=KNOWN_FAMILIES, duplicate_fraction=0.3, size_px=256, job_id="outage"),
        store=LocalBlobStore(settings.blob_root),
    )
    sent_at: dict[str, float] = {}
    labels: dict[str, dict[str, Any]] = {}
    stream: list[SimResult] = []

    def recorded() -> Iterator[SimResult]:
        for result in farm:
            sent_at[result.result_id] = time.monotonic()
            stream.append(result)
            labels[result.result_id] = dict(result.labels)
            yield result

    pipeline = Pipeline(
        stack,
        service_env={"LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000", "LITHOWATCH_SESSION_TIMEOUT_MS": "6000"},
    )
    try:
        dedupe = pipeline.start_service("dedupe")
        pipeline.wait_ready(120)
        publisher = threading.Thread(
            target=publish,
            args=(recorded(), settings, COUNT, RATE_PER_SECOND),
            kwargs={"progress": False},
        )
        publisher.start()
        time.sleep(OUTAGE_AT_SECONDS)
        outage_began = time.monotonic()
        stack.restart_redis(down_seconds=OUTAGE_SECONDS)
        outage_ended = time.monotonic()
        publisher.join()
        expected = set(labels)

        def settled(records: list[Any]) -> bool:
            return len({r.key for r in records}) >= len(expected)

        records = collect(stack.bootstrap, [Topics.UNIQUE, Topics.DUPLICATES, Topics.DLQ], settled, 180)
        alive = dedupe.process.alive()
        log_text = Path(dedupe.process.log_path).read_text(errors="replace")
    finally:
        pipeline.stop()

    unique = {
        u.result_id
        for u in (UniqueResult.model_validate_json(r.value) for r in records if r.topic == Topics.UNIQUE)
    }
    duplicates = {
        d.result_id: d
        for d in (
            DuplicateRecord.model_validate_json(r.value) for r in records if r.topic == Topics.DUPLICATES
        )
    }
    dlq = [r for r in records if r.topic == Topics.DLQ]
    # The control: the same stream, in order, through the same core with no outage (in-memory store).
    control = DedupeCore(
        InMemoryDedupeStore(), DedupeSettings(), load_image=ImageLoader(LocalBlobStore(settings.blob_root))
    )
    control_edges: dict[str, str] = {}
    for result in stream:
        outcome = control.process_batch([result])[0]
        if isinstance(outcome, DuplicateRecord):
            control_edges[result.result_id] = outcome.duplicate_of
    # Partitions are consumed in parallel, so which of two matching results comes first may differ
    # from the control; the grouping (who was merged with whom) must not.
    served = clusters(expected, {rid: d.duplicate_of for rid, d in duplicates.items()})
    reference = clusters(expected, control_edges)
    misrouted = served ^ reference
    resims = {rid for rid, lab in labels.items() if lab.get("resim_of")}
    originals = expected - resims
    # Re-simulations sent after the outage of results sent before it: the state must have survived.
    across = {
        rid
        for rid in resims
        if sent_at[rid] > outage_ended and sent_at[str(labels[rid]["resim_of"])] < outage_began
    }
    group_of = {rid: group for group in served for rid in group}
    caught = {rid for rid in resims if str(labels[rid]["resim_of"]) in group_of[rid]}
    print(
        f"\noutage: {len(expected)} results ({len(resims)} re-simulations, {len(across)} across the outage); "
        f"unique {len(unique)}, duplicates {len(duplicates)} (caught {len(caught)} of {len(resims)}, "
        f"across the outage {len(caught & across)} of {len(across)}); originals marked duplicate "
        f"{len(originals & set(duplicates))} (order across partitions); groups {len(served)}, "
        f"without the outage {len(reference)}, groups that differ {len(misrouted)}; dlq {len(dlq)}; "
        f"transient retries logged "
        f"{log_text.count('transient failure')}"
    )
    assert alive
    assert "transient failure" in log_text, "the outage was not noticed: the test did not test it"
    assert unique | set(duplicates) == expected, "lost results"
    assert not unique & set(duplicates), "a result routed both ways"
    assert dlq == [], "an outage must never send input to the DLQ"
    assert misrouted == set(), "results grouped differently than the same stream without an outage"
    assert across, "no re-simulation crossed the outage: the test did not test it"
    assert caught & across == across, "state from before the outage was lost"
    assert len(caught) >= 0.9 * len(resims)
