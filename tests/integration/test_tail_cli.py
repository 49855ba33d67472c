"""``lithowatch tail`` on the real broker: partitions, offsets, keys, a group's position, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from app.cli import main
from app.launcher import EmbeddedStack
from shared.contracts import Topics
from shared.testing import make_result, produce

pytestmark = pytest.mark.integration


def _tail(capfd: pytest.CaptureFixture[str], *options: str) -> list[dict]:
    assert main(["tail", Topics.RESULTS, "--timeout", "2", "--meta", *options]) == 0
    return [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]


def test_tail_chooses_partitions_offsets_keys_and_a_group_s_position(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    rng = np.random.default_rng(0)
    produce(stack.bootstrap, Topics.RESULTS, [make_result(f"t{i}", rng, size_px=16) for i in range(12)])

    everything = _tail(capfd, "--from-beginning")
    assert sorted(m["result_id"] for m in everything) == sorted(f"t{i}" for i in range(12))
    assert all(m["_meta"]["key"] == m["result_id"] for m in everything)
    by_partition: dict[int, list[int]] = {}
    for m in everything:
        by_partition.setdefault(m["_meta"]["partition"], []).append(m["_meta"]["offset"])
    busiest = max(by_partition, key=lambda p: len(by_partition[p]))

    one = _tail(capfd, "--from-beginning", "--partition", str(busiest))
    assert {m["_meta"]["partition"] for m in one} == {busiest} and len(one) == len(by_partition[busiest])
    assert [m["result_id"] for m in _tail(capfd, "--from-beginning", "--key", "t7")] == ["t7"]
    later = _tail(capfd, "--partition", str(busiest), "--offset", "1")
    assert sorted(m["_meta"]["offset"] for m in later) == sorted(o for o in by_partition[busiest] if o >= 1)

    # a group that has processed the first record of every partition: tail shows what it has left
    group = "lithowatch-tail-test"
    committer = KafkaConsumer(bootstrap_servers=stack.bootstrap, group_id=group, enable_auto_commit=False)
    tps = [TopicPartition(Topics.RESULTS, p) for p in by_partition]
    committer.assign(tps)
    committer.commit({tp: OffsetAndMetadata(1, "", -1) for tp in tps})
    committer.close()
    pending = _tail(capfd, "--group", group)
    assert len(pending) == 12 - len(by_partition) and all(m["_meta"]["offset"] >= 1 for m in pending)

    assert main(["tail", Topics.RESULTS, "--partition", "99", "--timeout", "1"]) == 2
    assert "has no partition 99" in capfd.readouterr().err


def test_tail_shows_a_library_tombstone(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from kafka import KafkaProducer

    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap)
    producer.send(Topics.LIBRARY, key=b"gone-entry", value=None)
    producer.flush()
    producer.close()
    assert main(["tail", Topics.LIBRARY, "--from-beginning", "--timeout", "2"]) == 0
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    assert lines == [{"key": "gone-entry", "tombstone": True}]
