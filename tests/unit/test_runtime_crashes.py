"""A record that ends the stage process is found by the attempt marks and set aside.

The process's death is a BaseException the runtime cannot catch (as SIGKILL or an
out-of-memory kill would leave nothing to catch); each "restart" is a new runner whose
consumer starts at the last committed offset, with the same state folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kafka import TopicPartition
from test_runtime_policy import (
    TP,
    FakeConsumer,
    FakeProducer,
    Item,
    Record,
    ScriptedStage,
    _dlq,
    _good,
    _outputs,
    _run,
)

from shared.attempts import AttemptJournal, Mark
from shared.runtime import StageRunner
from shared.settings import StageSettings
from shared.stage import ItemResult

OUT_TOPIC = "policy.out"


class ProcessDied(BaseException):
    """Stands in for a process killed while handling a record."""


class DyingStage(ScriptedStage):
    """Ends the process whenever a batch holds ``fatal`` (as a native crash or an OOM kill would)."""

    def __init__(self, fatal: int) -> None:
        super().__init__()
        self.fatal = fatal

    def process_batch(self, items: Sequence[Item]) -> list[ItemResult]:
        if any(item.n == self.fatal for item in items):
            raise ProcessDied()
        return super().process_batch(items)


def _restart_until_done(values: list[bytes], stage: ScriptedStage, state: Path, max_lives: int = 10) -> tuple[
    FakeProducer, int
]:
    """Run, and restart after each death from the last commit, until the topic is consumed."""
    producer = FakeProducer()
    committed = 0
    for life in range(1, max_lives + 1):
        consumer = FakeConsumer(values)
        consumer.position = committed
        try:
            _run(stage, consumer, producer, state_dir=str(state), batch_max_messages=4, crash_attempts=3)
            return producer, life - 1
        except ProcessDied:
            pass
        finally:
            if consumer.commits:
                committed = consumer.commits[-1][TP]
    raise AssertionError(f"still crashing after {max_lives} lives")


def test_a_record_that_keeps_killing_the_process_is_dead_lettered_as_crashed(tmp_path: Path) -> None:
    values = [_good(n) for n in range(10)]
    producer, deaths = _restart_until_done(values, DyingStage(fatal=5), tmp_path)
    dlq = _dlq(producer)
    assert [(d.reason, d.result_id, d.offset) for d in dlq] == [("crashed", "r5", 5)]
    assert dlq[0].value_b64  # the original bytes, to replay once the stage is fixed
    produced = {Item.model_validate_json(v).n for v in _outputs(producer, OUT_TOPIC)}
    assert produced == {2 * n for n in range(10) if n != 5}  # nothing else lost
    assert deaths == 4  # once in its batch (4-7), then three times alone: then it is set aside
    assert not list((tmp_path / "attempts").rglob("*.json"))  # no mark left once past the range


def test_only_the_culprit_is_taken_alone_and_the_rest_of_its_batch_goes_on(tmp_path: Path) -> None:
    stage = DyingStage(fatal=6)
    producer, _ = _restart_until_done([_good(n) for n in range(10)], stage, tmp_path)
    alone = [call for call in stage.calls if len(call) == 1]
    assert [call[0] for call in alone[:2]] == [4, 5]  # the batch that died (4-7) is taken one by one
    assert [d.result_id for d in _dlq(producer)] == ["r6"]


def test_a_clean_run_leaves_no_marks_and_a_stale_mark_is_ignored(tmp_path: Path) -> None:
    journal = AttemptJournal(tmp_path / "attempts", "lithowatch-policy")
    journal.write(TP.topic, TP.partition, Mark(offset=100, attempts=2, last=120))  # from another life
    stage = ScriptedStage()
    producer, deaths = _restart_until_done([_good(n) for n in range(6)], stage, tmp_path)
    assert deaths == 0 and not _dlq(producer)
    assert all(len(call) > 1 for call in stage.calls)  # never single-stepped
    assert journal.read(TP.topic, TP.partition) is None


def test_a_batch_given_back_by_a_transient_failure_does_not_count_as_an_attempt(tmp_path: Path) -> None:
    journal = AttemptJournal(tmp_path / "attempts", "lithowatch-policy")
    journal.write(TP.topic, TP.partition, Mark(offset=0, attempts=2, last=3))  # r0 ended two processes
    stage = ScriptedStage(transient_failures=6)  # past the 5 retries: paused, given back, then fine
    producer = FakeProducer()
    consumer = FakeConsumer([_good(n) for n in range(4)])
    _run(stage, consumer, producer, state_dir=str(tmp_path), crash_attempts=3)
    assert not _dlq(producer)  # the third attempt on r0 was given back, not a crash
    assert {Item.model_validate_json(v).n for v in _outputs(producer, OUT_TOPIC)} == {0, 2, 4, 6}
    assert journal.read(TP.topic, TP.partition) is None


def _gauge(name: str, **labels: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


class UnassignedConsumer(FakeConsumer):
    """A replica beyond the partition count: in the group, with nothing assigned."""

    def __init__(self) -> None:
        super().__init__([])
        self.polls = 0
        self.seen_up: list[float | None] = []

    def assignment(self) -> set[TopicPartition]:
        return {TP} if self.polls > 3 else set()  # a join completes as it leaves (no 15 s wait)

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[TopicPartition, list[Any]]:
        self.polls += 1
        if self.polls <= 3:
            self.seen_up.append(_gauge("lithowatch_stage_up", stage="policy"))
        if self.polls == 3 and self.on_drained is not None:
            self.on_drained()
        return {}


def test_stage_up_is_0_while_the_replica_has_no_partitions(tmp_path: Path) -> None:
    consumer = UnassignedConsumer()
    _run(ScriptedStage(), consumer, FakeProducer(), state_dir=str(tmp_path))
    assert consumer.seen_up[1:] and all(v == 0.0 for v in consumer.seen_up[1:])


def test_stage_up_is_1_while_consuming(tmp_path: Path) -> None:
    consumer = FakeConsumer([_good(n) for n in range(3)])
    seen: list[float | None] = []
    consumer.on_drained = None
    runner_box: list[Any] = []

    def drained() -> None:
        seen.append(_gauge("lithowatch_stage_up", stage="policy"))
        runner_box[0].request_stop()

    consumer.on_drained = drained
    settings = StageSettings(kafka_bootstrap="unused:1", batch_max_wait_ms=0, state_dir=str(tmp_path))
    runner = StageRunner(ScriptedStage(), settings, consumer=consumer, producer=FakeProducer())  # type: ignore[arg-type]
    runner_box.append(runner)
    runner.run(install_signals=False, serve_metrics=False)
    assert seen == [1.0]
    assert _gauge("lithowatch_stage_up", stage="policy") == 0.0  # stopped


TP2 = TopicPartition(TP.topic, 1)


class ShrinkingConsumer(FakeConsumer):
    """Holds two partitions until ``revoke`` is called, then only the first."""

    def __init__(self, values: Sequence[bytes]) -> None:
        super().__init__(values)
        self.both = True
        self.committed: list[set[TopicPartition]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TP, TP2} if self.both else {TP}

    def highwater(self, tp: TopicPartition) -> int:
        return 10

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.committed.append(set(offsets))
        super().commit(offsets)


def test_lag_series_of_a_partition_handed_away_is_removed(tmp_path: Path) -> None:
    consumer = ShrinkingConsumer([])
    settings = StageSettings(kafka_bootstrap="unused:1", state_dir=str(tmp_path))
    runner = StageRunner(ScriptedStage(), settings, consumer=consumer, producer=FakeProducer())  # type: ignore[arg-type]
    runner._next_offsets.update({TP: 4, TP2: 7})
    runner._update_lag(force=True)
    lag = "lithowatch_consumer_lag"
    assert _gauge(lag, stage="policy", topic=TP.topic, partition="1") == 3.0
    consumer.both = False  # a rebalance gives partition 1 to another replica
    runner._update_lag(force=True)
    assert _gauge(lag, stage="policy", topic=TP.topic, partition="1") is None
    assert _gauge(lag, stage="policy", topic=TP.topic, partition="0") == 6.0


class RevokingStage(ScriptedStage):
    """Partition 1 is handed to another member while the batch is processed."""

    def __init__(self, consumer: ShrinkingConsumer) -> None:
        super().__init__()
        self.consumer = consumer

    def process_batch(self, items: Sequence[Item]) -> list[ItemResult]:
        self.consumer.both = False
        return super().process_batch(items)


def test_only_partitions_still_assigned_are_committed(tmp_path: Path) -> None:
    consumer = ShrinkingConsumer([_good(n) for n in range(3)])
    consumer.records.append(Record(TP.topic, 1, 0, b"p1", _good(9), [("result_id", b"p1")]))
    producer = FakeProducer()
    _run(RevokingStage(consumer), consumer, producer, state_dir=str(tmp_path))
    assert consumer.committed and all(tps == {TP} for tps in consumer.committed)


def test_an_old_mark_is_ignored(tmp_path: Path) -> None:
    import os

    journal = AttemptJournal(tmp_path, "g", max_age_seconds=3600)
    journal.write("t", 0, Mark(offset=3, attempts=2, last=5))
    assert journal.read("t", 0) == Mark(offset=3, attempts=2, last=5)
    path = next(tmp_path.rglob("*.json"))
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime - 7200))
    assert journal.read("t", 0) is None


def test_livez_says_alive_while_the_loop_turns_and_healthz_says_ready_while_consuming(tmp_path: Path) -> None:
    import time
    import urllib.error
    import urllib.request

    from prometheus_client import CollectorRegistry

    from shared.metrics import MetricsServer

    consumer = UnassignedConsumer()  # a spare replica: alive, not ready
    settings = StageSettings(kafka_bootstrap="unused:1", state_dir=str(tmp_path), max_poll_interval_ms=10_000)
    runner = StageRunner(ScriptedStage(), settings, consumer=consumer, producer=FakeProducer())  # type: ignore[arg-type]
    server = MetricsServer("127.0.0.1", 0, runner.healthy, registry=CollectorRegistry(), alive=runner.alive)
    server.start()

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    try:
        assert (status("/livez"), status("/healthz")) == (200, 503)
        runner._last_beat = time.monotonic() - 61  # the loop has not turned for over a minute
        assert (runner.alive(), status("/livez")) == (False, 503)
    finally:
        server.stop()
