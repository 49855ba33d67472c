"""The runtime's error and commit policy, with honest fakes of the Kafka consumer and producer.

The broker cannot make one topic unreachable on demand, so "no commit before the
produce succeeds" is proven here: a producer whose flush fails N times, a stage that
raises TransientError, InputError and unexpected exceptions.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError
from pydantic import BaseModel

from shared.contracts import Contract, DLQRecord, Topics
from shared.errors import DependencyUnavailable, InputError
from shared.runtime import StageRunner
from shared.settings import StageSettings
from shared.stage import ItemResult, Output, StageBase

IN_TOPIC = "policy.in"
OUT_TOPIC = "policy.out"
TP = TopicPartition(IN_TOPIC, 0)


class Item(Contract):
    result_id: str
    n: int


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class FakeConsumer:
    """Hands out queued records; remembers commits, seeks and pauses like kafka-python's consumer."""

    def __init__(self, values: Sequence[bytes | None]) -> None:
        self.records = [
            Record(IN_TOPIC, 0, i, f"r{i}".encode(), v, [("result_id", f"r{i}".encode())])
            for i, v in enumerate(values)
        ]
        self.position = 0
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[int] = []
        self.paused: set[TopicPartition] = set()
        self.closed = False
        self.on_drained: Any = None

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[TopicPartition, list[Record]]:
        if TP in self.paused:
            return {}
        if self.position >= len(self.records):
            if self.on_drained is not None:
                self.on_drained()
            return {}
        chunk = self.records[self.position : self.position + max_records]
        self.position += len(chunk)
        return {TP: chunk}

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)
        self.position = offset

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.records)

    def close(self, autocommit: bool = False) -> None:
        self.closed = True


class _Future:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, timeout: float | None = None) -> None:
        if self.error is not None:
            raise self.error


class FakeProducer:
    """Keeps sent messages; the first ``fail_flushes`` flushes time out (messages not acknowledged)."""

    def __init__(self, fail_flushes: int = 0) -> None:
        self.fail_flushes = fail_flushes
        self.pending: list[tuple[str, bytes, bytes]] = []
        self.acked: list[tuple[str, bytes, bytes]] = []
        self.flush_calls = 0
        self.events: list[str] = []
        self.headers: list[tuple[str, list[tuple[str, bytes]]]] = []

    def send(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> _Future:
        self.pending.append((topic, key, value))
        self.headers.append((topic, list(headers)))
        return _Future(None)

    def flush(self, timeout: float | None = None) -> None:
        self.flush_calls += 1
        if self.fail_flushes > 0:
            self.fail_flushes -= 1
            self.pending.clear()
            self.events.append("flush_failed")
            raise KafkaTimeoutError("output topic unreachable")
        self.acked.extend(self.pending)
        self.pending.clear()
        self.events.append("flush_ok")

    def close(self, timeout: float | None = None) -> None:
        pass


class Out(BaseModel):
    result_id: str
    n: int


class ScriptedStage(StageBase):
    """Doubles ``n``; can raise transient errors, reject items, or crash on chosen values."""

    name = "policy"
    input_topic = IN_TOPIC
    input_model = Item

    def __init__(self, transient_failures: int = 0, reject: int = -1, crash_on: int = -1) -> None:
        self.transient_failures = transient_failures
        self.reject = reject
        self.crash_on = crash_on
        self.calls: list[list[int]] = []

    def process_batch(self, items: Sequence[Item]) -> list[ItemResult]:
        self.calls.append([item.n for item in items])
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise DependencyUnavailable("redis away")
        if any(item.n == self.crash_on for item in items):
            raise ZeroDivisionError("bug in the stage")
        out: list[ItemResult] = []
        for item in items:
            if item.n == self.reject:
                out.append(InputError("rejected on purpose", reason="test_reject"))
            else:
                out.append([Output(OUT_TOPIC, Item(result_id=item.result_id, n=2 * item.n), item.result_id)])
        return out


def _good(n: int) -> bytes:
    return Item(result_id=f"r{n}", n=n).model_dump_json().encode()


def _run(stage: Any, consumer: FakeConsumer, producer: FakeProducer, **overrides: Any) -> StageRunner:
    settings = StageSettings(
        kafka_bootstrap="unused:1",
        batch_max_messages=overrides.pop("batch_max_messages", 10),
        batch_max_wait_ms=0,
        retry_attempts=overrides.pop("retry_attempts", 5),
        retry_backoff_seconds=0.001,
        retry_backoff_max_seconds=0.01,
        kafka_max_message_bytes=overrides.pop("kafka_max_message_bytes", 8 * 1024 * 1024),
        state_dir=overrides.pop("state_dir", None) or tempfile.mkdtemp(prefix="lw-state-"),
        **overrides,
    )
    runner = StageRunner(stage, settings, consumer=consumer, producer=producer)  # type: ignore[arg-type]
    consumer.on_drained = runner.request_stop
    runner.run(install_signals=False, serve_metrics=False)
    return runner


def _outputs(producer: FakeProducer, topic: str) -> list[bytes]:
    return [value for t, _, value in producer.acked if t == topic]


def _dlq(producer: FakeProducer) -> list[DLQRecord]:
    return [DLQRecord.model_validate_json(v) for v in _outputs(producer, Topics.DLQ)]


def test_commit_only_after_a_successful_produce_and_the_batch_is_produced_again() -> None:
    consumer = FakeConsumer([_good(n) for n in range(5)])
    producer = FakeProducer(fail_flushes=3)
    events: list[str] = []
    original_commit = consumer.commit

    def commit(offsets: dict[TopicPartition, Any]) -> None:
        events.extend(producer.events)
        producer.events.clear()
        events.append("commit")
        original_commit(offsets)

    consumer.commit = commit  # type: ignore[method-assign]
    _run(ScriptedStage(), consumer, producer)
    assert events == ["flush_failed", "flush_failed", "flush_failed", "flush_ok", "commit"]
    assert consumer.commits == [{TP: 5}]
    assert sorted(_outputs(producer, OUT_TOPIC)) == sorted(
        Item(result_id=f"r{n}", n=2 * n).model_dump_json().encode() for n in range(5)
    )


def test_produce_still_failing_after_retries_commits_nothing_and_rewinds() -> None:
    consumer = FakeConsumer([_good(n) for n in range(3)])
    producer = FakeProducer(fail_flushes=10_000)
    stage = ScriptedStage()
    stops = 0

    def stop_after_two_rounds() -> None:
        nonlocal stops
        stops += 1

    # Stop once the runner has rewound twice (it keeps retrying the same batch, never dropping it).
    original_seek = consumer.seek

    def seek(tp: TopicPartition, offset: int) -> None:
        original_seek(tp, offset)
        if len(consumer.seeks) >= 2:
            runner_holder[0].request_stop()

    consumer.seek = seek  # type: ignore[method-assign]
    runner_holder: list[StageRunner] = []
    settings = StageSettings(
        kafka_bootstrap="unused:1",
        batch_max_wait_ms=0,
        retry_attempts=2,
        retry_backoff_seconds=0.001,
        retry_backoff_max_seconds=0.01,
    )
    runner = StageRunner(stage, settings, consumer=consumer, producer=producer)  # type: ignore[arg-type]
    runner_holder.append(runner)
    consumer.on_drained = stop_after_two_rounds
    runner.run(install_signals=False, serve_metrics=False)
    assert consumer.commits == []
    assert consumer.seeks[:2] == [0, 0]
    assert all(call == [0, 1, 2] for call in stage.calls)
    assert len(stage.calls) >= 6  # 3 tries per round (1 + 2 retries), two rounds


def test_transient_stage_error_is_retried_then_processed_once_committed() -> None:
    consumer = FakeConsumer([_good(n) for n in range(4)])
    producer = FakeProducer()
    stage = ScriptedStage(transient_failures=2)
    _run(stage, consumer, producer)
    assert stage.calls == [[0, 1, 2, 3]] * 3
    assert consumer.commits == [{TP: 4}]
    assert len(_outputs(producer, OUT_TOPIC)) == 4
    assert _dlq(producer) == []


def test_input_error_goes_to_the_dlq_and_the_rest_of_the_batch_goes_on() -> None:
    consumer = FakeConsumer([_good(n) for n in range(4)])
    producer = FakeProducer()
    _run(ScriptedStage(reject=2), consumer, producer)
    dlq = _dlq(producer)
    assert [(d.reason, d.result_id, d.offset, d.stage) for d in dlq] == [("test_reject", "r2", 2, "policy")]
    assert dlq[0].value_b64 is not None
    assert len(_outputs(producer, OUT_TOPIC)) == 3
    assert consumer.commits == [{TP: 4}]


def test_null_header_values_neither_crash_the_stage_nor_travel_on() -> None:
    consumer = FakeConsumer([_good(n) for n in range(3)])
    for record in consumer.records:  # librdkafka and Java clients may send headers whose value is null
        record.headers = [("result_id", None), ("trace", None), ("farm", b"f1")]  # type: ignore[list-item]
    producer = FakeProducer()
    _run(ScriptedStage(reject=1), consumer, producer)
    dlq = _dlq(producer)
    assert [(d.reason, d.result_id) for d in dlq] == [("test_reject", "r1")]  # the id from the key
    assert dlq[0].headers == {"result_id": "", "trace": "", "farm": "f1"}
    assert len(_outputs(producer, OUT_TOPIC)) == 2 and consumer.commits == [{TP: 3}]
    for topic, headers in producer.headers:
        assert all(value is not None for _, value in headers)
        assert topic != OUT_TOPIC or ("farm", b"f1") in headers  # the others are copied on


def test_unexpected_exception_is_isolated_item_by_item_and_the_culprit_dlqd() -> None:
    consumer = FakeConsumer([_good(n) for n in range(4)])
    producer = FakeProducer()
    stage = ScriptedStage(crash_on=1)
    _run(stage, consumer, producer)
    assert stage.calls == [[0, 1, 2, 3], [0], [1], [2], [3]]
    dlq = _dlq(producer)
    assert [(d.reason, d.result_id) for d in dlq] == [("processing_error", "r1")]
    assert "ZeroDivisionError" in dlq[0].error
    assert len(_outputs(producer, OUT_TOPIC)) == 3
    assert consumer.commits == [{TP: 4}]


class RaisingStage(ScriptedStage):
    """A stage that raises (rather than returns) an InputError for a bad item."""

    def process_batch(self, items: Sequence[Item]) -> list[ItemResult]:
        self.calls.append([item.n for item in items])
        if any(item.n == 1 for item in items):
            raise InputError("raised, not returned", reason="raised_reject")
        return [[Output(OUT_TOPIC, i, i.result_id)] for i in items]


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError."""


class MemoryHungryStage(ScriptedStage):
    def __init__(self, failures: list[BaseException]) -> None:
        super().__init__()
        self.failures = failures

    def process_batch(self, items: Sequence[Item]) -> list[ItemResult]:
        if self.failures:
            raise self.failures.pop(0)
        return super().process_batch(items)


@pytest.mark.parametrize("error", [MemoryError(), OutOfMemoryError("CUDA out of memory")])
def test_running_out_of_memory_is_retried_not_dead_lettered(error: BaseException) -> None:
    consumer = FakeConsumer([_good(n) for n in range(3)])
    producer = FakeProducer()
    _run(MemoryHungryStage([error, error]), consumer, producer)
    assert _dlq(producer) == []
    assert sorted(Item.model_validate_json(v).n for v in _outputs(producer, OUT_TOPIC)) == [0, 2, 4]
    assert consumer.commits == [{TP: 3}]


def test_a_raised_input_error_is_dlqd_not_fatal() -> None:
    consumer = FakeConsumer([_good(n) for n in range(3)])
    producer = FakeProducer()
    _run(RaisingStage(), consumer, producer)
    assert [(d.reason, d.result_id) for d in _dlq(producer)] == [("raised_reject", "r1")]
    assert len(_outputs(producer, OUT_TOPIC)) == 2
    assert consumer.commits == [{TP: 3}]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (b'{"result_id": "r0"}', "missing_field"),
        (b'{"result_id": "r0", "n": "seven"}', "schema"),
        (b"[1, 2]", "schema"),
        (None, "empty_message"),
        (b'{"result_id": "r0", "n": 1, "pad": "' + b"x" * 3000 + b'"}', "too_large"),
    ],
)
def test_decode_failures_have_precise_reasons(value: bytes | None, reason: str) -> None:
    consumer = FakeConsumer([value, _good(1)])
    producer = FakeProducer()
    _run(ScriptedStage(), consumer, producer, kafka_max_message_bytes=2048)
    dlq = _dlq(producer)
    assert [d.reason for d in dlq] == [reason], [d.error for d in dlq]
    assert len(_outputs(producer, OUT_TOPIC)) == 1
    assert consumer.commits == [{TP: 2}]


class Padded(Contract):
    result_id: str
    pad: str


class GrowingStage(ScriptedStage):
    """Item ``n`` becomes an output of ``n`` kilobytes (stages add hashes, images, vectors)."""

    def process_batch(self, items: Sequence[Item]) -> list[ItemResult]:
        return [
            [Output(OUT_TOPIC, Padded(result_id=i.result_id, pad="x" * 1024 * i.n), i.result_id)]
            for i in items
        ]


def test_an_output_over_the_message_limit_is_dlqd_not_retried_for_ever() -> None:
    consumer = FakeConsumer([_good(1), _good(9), _good(2)])
    producer = FakeProducer()
    _run(GrowingStage(), consumer, producer, kafka_max_message_bytes=8 * 1024)
    dlq = _dlq(producer)
    assert [(d.reason, d.result_id) for d in dlq] == [("output_too_large", "r1")]
    assert "message limit" in dlq[0].error
    assert len(_outputs(producer, OUT_TOPIC)) == 2 and consumer.commits == [{TP: 3}]


def test_header_bytes_count_towards_the_input_limit() -> None:
    consumer = FakeConsumer([_good(1), _good(2)])
    consumer.records[0].headers.append(("trace", b"t" * 3000))
    producer = FakeProducer()
    _run(ScriptedStage(), consumer, producer, kafka_max_message_bytes=2048)
    assert [d.reason for d in _dlq(producer)] == ["too_large"]
    assert len(_outputs(producer, OUT_TOPIC)) == 1


TP2 = TopicPartition(IN_TOPIC, 1)


class RebalancingConsumer(FakeConsumer):
    """Partition 1 is assigned during the first back-off and, unpaused, hands over its records."""

    def __init__(self, values: Sequence[bytes | None], second: Sequence[bytes]) -> None:
        super().__init__(values)
        self.second = [
            Record(IN_TOPIC, 1, i, f"s{i}".encode(), v, [("result_id", f"s{i}".encode())])
            for i, v in enumerate(second)
        ]
        self.position2 = 0
        self.rebalanced = False

    def assignment(self) -> set[TopicPartition]:
        return {TP, TP2} if self.rebalanced else {TP}

    def pause(self, *tps: TopicPartition) -> None:
        super().pause(*tps)
        self.rebalanced = True  # the group rebalances while the stage backs off

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[TopicPartition, list[Record]]:
        if self.rebalanced and TP2 not in self.paused and self.position2 < len(self.second):
            chunk = self.second[self.position2 : self.position2 + max_records]
            self.position2 += len(chunk)
            return {TP2: chunk}
        return super().poll(timeout_ms, max_records)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp == TP2:
            self.position2 = offset
        else:
            super().seek(tp, offset)


def test_records_polled_during_back_off_after_a_rebalance_are_not_lost() -> None:
    second = [Item(result_id=f"s{n}", n=100 + n).model_dump_json().encode() for n in range(3)]
    consumer = RebalancingConsumer([_good(n) for n in range(2)], second)
    producer = FakeProducer()
    _run(ScriptedStage(transient_failures=1), consumer, producer)
    produced = sorted(Item.model_validate_json(v).n for v in _outputs(producer, OUT_TOPIC))
    assert produced == [0, 2, 200, 202, 204]  # every record of both partitions, once
    assert any(c.get(TP2) == 3 for c in consumer.commits)  # committed past the last of them


def test_an_over_size_input_is_dlqd_by_reference_so_the_dlq_record_fits() -> None:
    big = b'{"result_id": "r0", "n": 1, "pad": "' + b"x" * 300_000 + b'"}'
    consumer = FakeConsumer([big, _good(1)])
    producer = FakeProducer()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(Path(tempfile.mkdtemp()))
        _run(ScriptedStage(), consumer, producer, kafka_max_message_bytes=200_000)
        raw = _outputs(producer, Topics.DLQ)
        assert len(raw) == 1 and len(raw[0]) < 200_000
        record = DLQRecord.model_validate_json(raw[0])
        assert record.reason == "too_large" and record.value_b64 is None and record.value_uri
        assert record.value_bytes == len(big)


# ---- no unsafe deserialisation anywhere in shared/ and services/ ------------------------------

ROOT = Path(__file__).resolve().parents[2]
UNSAFE_PATTERNS: list[tuple[str, str]] = [
    (r"^\s*(import|from)\s+(c?pickle|dill|joblib|shelve|marshal)\b", "pickle-family module imported"),
    (r"\bpickle\.(load|loads|Unpickler)\b", "pickle load"),
    (r"allow_pickle\s*=\s*True", "np.load/np.save with allow_pickle=True"),
    (r"\byaml\.unsafe_load\b|\byaml\.load_all\(|Loader\s*=\s*yaml\.(Unsafe)?Loader\b", "unsafe YAML loader"),
]


def _python_sources() -> list[Path]:
    return sorted(p for d in ("shared", "services") for p in (ROOT / d).rglob("*.py"))


def _calls(text: str, name: str) -> list[str]:
    """The text of every call ``name(...)`` (balanced parentheses), to check its keyword arguments."""
    calls = []
    for match in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 1, match.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        calls.append(text[match.start() : i])
    return calls


def test_no_pickle_or_unsafe_loaders_in_the_code() -> None:
    problems = []
    sources = _python_sources()
    assert len(sources) > 50  # the walk found the code
    for path in sources:
        text = path.read_text()
        rel = path.relative_to(ROOT)
        for lineno, line in enumerate(text.splitlines(), 1):
            for pattern, what in UNSAFE_PATTERNS:
                if re.search(pattern, line):
                    problems.append(f"{rel}:{lineno}: {what}: {line.strip()}")
        problems += [
            f"{rel}: torch.load without weights_only=True: {c}"
            for c in _calls(text, "torch.load")
            if "weights_only=True" not in c
        ]
        problems += [
            f"{rel}: yaml.load without SafeLoader: {c}"
            for c in _calls(text, "yaml.load")
            if "SafeLoader" not in c and "CSafeLoader" not in c
        ]
        problems += [
            f"{rel}: np.load without allow_pickle=False: {c}"
            for c in _calls(text, "np.load")
            if "allow_pickle=False" not in c
        ]
    assert problems == []


def test_the_unsafe_pattern_check_catches_what_it_should() -> None:
    bad = "import pickle\nx = np.load(f, allow_pickle=True)\ny = torch.load(p)\nz = yaml.load(s)\n"
    found = [
        what for line in bad.splitlines() for pattern, what in UNSAFE_PATTERNS if re.search(pattern, line)
    ]
    assert found == ["pickle-family module imported", "np.load/np.save with allow_pickle=True"]
    assert _calls(bad, "torch.load") == ["torch.load(p)"]
    assert _calls("torch.load(p, weights_only=True)", "torch.load") == ["torch.load(p, weights_only=True)"]


def test_redis_tls_ca_without_a_tls_url_is_a_config_error() -> None:
    """redis-py would raise TypeError on every command (each input then dead-lettered)."""
    from services.dedupe.main import redis_client
    from shared.errors import ConfigError
    from shared.settings import CommonSettings

    ca = Path("/nonexistent/ca.pem")
    with pytest.raises(ConfigError, match="rediss://"):
        redis_client(CommonSettings(redis_url="redis://127.0.0.1:1/0", redis_ssl_ca_certs=ca))
    assert redis_client(CommonSettings(redis_url="rediss://127.0.0.1:1/0", redis_ssl_ca_certs=ca)) is not None


def test_kafka_record_checksums_run_in_c() -> None:
    """The crc32c package is a dependency: without it every batch is checksummed in Python."""
    from shared.kafka_io import native_crc32c

    assert native_crc32c()


class SlowStage(ScriptedStage):
    """Takes ``seconds_per_item`` per message (a large encoder on a CPU)."""

    def __init__(self, seconds_per_item: float) -> None:
        super().__init__()
        self.seconds_per_item = seconds_per_item

    def process_batch(self, items: Sequence[Item]) -> list[ItemResult]:
        import time

        time.sleep(self.seconds_per_item * len(items))
        return super().process_batch(items)


def test_batches_shrink_to_fit_the_poll_interval_at_the_measured_pace() -> None:
    """At 0.1 s per message and a 2 s poll interval, a batch holds at most 0.25 * 2 / 0.1 = 5."""
    consumer = FakeConsumer([_good(n) for n in range(24)])
    producer = FakeProducer()
    stage = SlowStage(0.1)
    runner = _run(stage, consumer, producer, batch_max_messages=16, max_poll_interval_ms=2000)
    sizes = [len(call) for call in stage.calls]
    assert sizes[0] == 16  # nothing measured yet: the configured maximum
    assert all(size <= 5 for size in sizes[1:]) and sizes[1:]
    assert sum(sizes) == 24 and consumer.commits[-1] == {TP: 24}
    assert runner.seconds_per_message is not None and runner.seconds_per_message >= 0.1
