"""``lithowatch dedupe DIR`` and the dedupe service on the real broker and Redis reach the same verdicts
on the same folder replayed in the same order (one partition, so the service sees the folder's order)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from app.launcher import EmbeddedStack
from app.supervisor import Pipeline
from services.simfarm.core import replay
from shared.contracts import DuplicateRecord, Topics, UniqueResult
from shared.dataset import DatasetWriter, read_dataset
from shared.testing import collect, produce
from toolkit.litho import FarmGenerator

pytestmark = pytest.mark.integration


@pytest.fixture
def one_partition_stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    embedded = EmbeddedStack(workdir=tmp_path / "stack", partitions=1)
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


def farm_folder(root: Path) -> Path:
    """Six layouts, three farm variants each (window shift, dose, focus, bias), and two exact copies."""
    farm = FarmGenerator(seed=21, size_px=128, nm_per_px=8.0)
    with DatasetWriter(root) as writer:
        first = []
        for sample in farm.samples(6, 3, max_shift_px=8):
            writer.add(sample.id, sample.mask, sample.simulated, sample.nm_per_px, sample.labels)
            if sample.labels["variant"] == 0:
                first.append(sample)
        for sample in first[:2]:
            writer.add(f"copy-{sample.id}", sample.mask, sample.simulated, sample.nm_per_px, sample.labels)
    return root


def test_offline_verdicts_are_the_stream_verdicts(one_partition_stack: EmbeddedStack, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    folder = farm_folder(tmp_path / "results")
    ids = [item.id for item in read_dataset(folder)]
    out = tmp_path / "dupes.json"
    assert main(["dedupe", str(folder), "--out", str(out), "--quiet"]) == 0, capfd.readouterr().err
    report = json.loads(out.read_text())
    offline: dict[str, tuple[str, str] | None] = dict.fromkeys(ids)
    for group in report["groups"]:
        for duplicate in group["duplicates"]:
            offline[duplicate["id"]] = (duplicate["duplicate_of"], duplicate["method"])
    assert sum(v is not None for v in offline.values()) >= 2  # the exact copies at least

    stack = one_partition_stack
    pipeline = Pipeline(stack, service_env={"LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000",
                                            "LITHOWATCH_SESSION_TIMEOUT_MS": "6000"})
    pipeline.start_service("dedupe")
    try:
        pipeline.wait_ready(120)
        produce(stack.bootstrap, Topics.RESULTS, replay(read_dataset(folder)))
        records = collect(stack.bootstrap, [Topics.UNIQUE, Topics.DUPLICATES],
                          lambda rs: len(rs) >= len(ids), timeout_seconds=180)
    finally:
        pipeline.stop()
    stream: dict[str, tuple[str, str] | None] = {}
    for record in records:
        if record.topic == Topics.UNIQUE:
            stream[UniqueResult.model_validate_json(record.value).result_id] = None
        else:
            duplicate = DuplicateRecord.model_validate_json(record.value)
            stream[duplicate.result_id] = (duplicate.duplicate_of, duplicate.method)
    assert stream == offline
