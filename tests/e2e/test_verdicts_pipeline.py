"""One verdict per result on the verdicts topic, every stage its own process on the real broker.

Results go in (some re-simulations of earlier ones, some invalid, one of a newer minor contract
version, one whose mask's blob is not written yet); every result ends with exactly one latest
verdict (scored, duplicate or dead-lettered) that keeps the farm's ``job_id`` and ``clip_id``.
The late blob is then written and the dead letter replayed: its newer verdict says scored.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.dlq_cli import plan_replays, produce_replays, read_dead_letters, select, selection_from
from app.supervisor import Pipeline
from shared.blobstore import LocalBlobStore
from shared.contracts import ImageRef, SimResult, Topics, VerdictRecord
from shared.imaging import encode_image, sha256_hex
from shared.kafka_io import make_producer
from shared.settings import CommonSettings
from shared.testing import collect, make_result, produce

pytestmark = pytest.mark.e2e
JOB = "job-verdicts"


def farm_result(result_id: str, seed: int) -> SimResult:
    result = make_result(result_id, np.random.default_rng(seed), labels={"family": "random"})
    return result.model_copy(update={"job_id": JOB, "clip_id": f"clip-{result_id}"})


def with_mask(result: SimResult, png: bytes, inline: bool = True) -> SimResult:
    digest = sha256_hex(png)
    ref = ImageRef(format="png", sha256=digest, shape=(64, 64), dtype="uint8",
                   inline_b64=base64.b64encode(png).decode() if inline else None,
                   uri=None if inline else f"blob://{digest}.png")
    return result.model_copy(update={"mask": ref})


def raw(result: SimResult, **changed: Any) -> tuple[str, bytes]:
    doc = json.loads(result.model_dump_json())
    doc.update(changed)
    return result.result_id, json.dumps(doc).encode()


def latest_verdicts(records: list[Any]) -> dict[str, list[VerdictRecord]]:
    """Every verdict per result id, in log order (one key, one partition)."""
    by_key: dict[str, list[VerdictRecord]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        verdict = VerdictRecord.from_wire(record.value)
        assert record.key == verdict.result_id.encode()
        by_key.setdefault(verdict.result_id, []).append(verdict)
    return by_key


def wait_for_verdicts(bootstrap: str, wanted: set[str], timeout_seconds: float = 240) -> None:
    """Wait until every result in ``wanted`` has a verdict."""
    def done(records: list[Any]) -> bool:
        return wanted <= {r.key.decode() for r in records}

    records = collect(bootstrap, [Topics.VERDICTS], done, timeout_seconds)
    assert done(records), f"no verdict yet for {sorted(wanted - {r.key.decode() for r in records})}"


def test_every_result_ends_in_exactly_one_latest_verdict(pipeline: Pipeline) -> None:
    stack = pipeline.stack
    originals = [farm_result(f"v-orig-{i}", 100 + i) for i in range(4)]
    late_png = encode_image((np.random.default_rng(7).random((64, 64)) > 0.5).astype(np.float32), "png")
    late = with_mask(farm_result("v-late", 200), late_png, inline=False)  # its blob arrives later
    truncated = with_mask(farm_result("v-truncated", 300), encode_image(np.ones((64, 64), np.float32))[:20])
    newer_minor = raw(farm_result("v-newer-minor", 400), schema_minor=9, added_by_a_newer_farm={"x": 1})
    newer_major = raw(farm_result("v-newer-major", 500), schema_version=2)
    produce(stack.bootstrap, Topics.RESULTS, [*originals, late, truncated])
    produce(stack.bootstrap, Topics.RESULTS, [
        newer_minor, newer_major, ("v-bad-json", b'{"result_id": "v-bad-json", "job_id": '),
    ])
    first = {*(r.result_id for r in originals), "v-late", "v-truncated", "v-newer-minor",
             "v-newer-major", "v-bad-json"}
    wait_for_verdicts(stack.bootstrap, first)
    # re-simulations of two originals, published once the originals are decided
    duplicates = [farm_result(f"v-dup-{i}", 100 + i) for i in range(2)]
    produce(stack.bootstrap, Topics.RESULTS, duplicates)
    wait_for_verdicts(stack.bootstrap, first | {d.result_id for d in duplicates})

    # the cause of the late result's dead letter is fixed: its blob is written, the letter replayed
    blobs = Path(stack.workdir) / "blobs"
    LocalBlobStore(blobs).put(late_png, sha256_hex(late_png), "png")
    settings = CommonSettings(kafka_bootstrap=stack.bootstrap, blob_root=blobs)
    chosen = select(read_dead_letters(settings).letters, selection_from(replay_filters(["v-late"])))
    replays, problems = plan_replays(chosen, LocalBlobStore(blobs))
    assert problems == [] and len(replays) == 1
    producer = make_producer(settings, client_id="test-replay")
    try:
        produce_replays(producer, replays)
    finally:
        producer.close(timeout=10)

    def late_scored(records: list[Any]) -> bool:
        return any(r.key == b"v-late" and json.loads(r.value)["outcome"] == "scored" for r in records)

    verdicts = latest_verdicts(collect(stack.bootstrap, [Topics.VERDICTS], late_scored, 240))
    every = first | {d.result_id for d in duplicates}
    assert set(verdicts) == every, "one verdict stream per result, nothing else"
    latest = {rid: history[-1] for rid, history in verdicts.items()}
    summary = {
        rid: (v.outcome, v.stage, v.reason or v.method or v.decision) for rid, v in sorted(latest.items())
    }
    print("\nresult | outcome | stage | why")
    for rid, row in summary.items():
        print(rid, "|", " | ".join(str(x) for x in row))

    for rid in [r.result_id for r in originals] + ["v-late", "v-newer-minor"]:
        assert latest[rid].outcome == "scored", summary[rid]
        assert latest[rid].decision in ("known", "novel", "provisional")
        assert isinstance(latest[rid].alignment_flagged, bool)  # known after the align stage
    for i in range(2):
        dup = latest[f"v-dup-{i}"]
        assert (dup.outcome, dup.duplicate_of, dup.method, dup.stage) == (
            "duplicate", f"v-orig-{i}", "exact", "dedupe")
    assert summary["v-truncated"] == ("dead_lettered", "dedupe", "image_truncated")
    assert summary["v-newer-major"] == ("dead_lettered", "dedupe", "schema_version_unsupported")
    assert summary["v-bad-json"] == ("dead_lettered", "dedupe", "invalid_json")
    # the farm's ids are kept wherever the message could be read
    for rid, verdict in latest.items():
        if rid != "v-bad-json":
            assert (verdict.job_id, verdict.clip_id) == (JOB, f"clip-{rid}"), rid
    assert (latest["v-bad-json"].job_id, latest["v-bad-json"].clip_id) == ("", "")
    # the late result: dead-lettered first, scored after the replay; the latest is the truth
    assert [v.outcome for v in verdicts["v-late"]] == ["dead_lettered", "scored"]
    assert verdicts["v-late"][0].reason == "blob_missing"
    # a redelivery (at least once) may decide a result again, never otherwise
    for rid, history in verdicts.items():
        if rid != "v-late":
            assert {(v.outcome, v.stage) for v in history} == {(latest[rid].outcome, latest[rid].stage)}, rid


def replay_filters(result_ids: list[str]) -> argparse.Namespace:
    """``lithowatch dlq replay --result-id ...`` as its parser gives it."""
    return argparse.Namespace(stage=[], reason=[], result_ids=result_ids, since=None)
