"""The one stage runtime every service uses.

Loop: poll a batch (by size and wait time) -> decode -> ``stage.process_batch`` ->
produce outputs keyed by ``result_id`` -> flush -> commit the consumed offsets.
Offsets are committed only after every output is acknowledged (at least once).

Error policy, by phase, in one place:
- decode: invalid JSON, schema violations, unknown fields, over-size messages ->
  a DLQ record with the reason and the original bytes; the batch goes on;
- process: :class:`~shared.errors.InputError` for an item -> DLQ; any other
  exception for the batch -> the items are retried one by one so the culprit is
  found, and an item that fails alone goes to the DLQ as ``processing_error``
  (running out of host or GPU memory is transient, never a DLQ verdict);
  :class:`~shared.errors.TransientError` -> bounded retries with backoff, then the
  partitions are paused and the same batch is retried later (never dropped);
- produce: an output over the message limit (its size counted with headers before
  it is sent) is its input's verdict: DLQ as ``output_too_large``; any other send or
  flush failure is transient: nothing is committed, the batch is produced again
  (consumers are idempotent on ``result_id``);
- headers: a null header value (legal in Kafka) is not copied onto outputs and is an
  empty string in a DLQ record; records a poll hands over while the stage backs off
  (a rebalance can assign new, unpaused partitions) are sought back, never skipped;
- crashes: a record that ends the process (out of memory, a native crash, longer than
  ``max_poll_interval_ms``) is found by the attempt marks written before each batch
  (:mod:`shared.attempts`) and dead-lettered as ``crashed`` after ``crash_attempts``;
- offsets: only partitions still assigned are committed; ``lithowatch_stage_up`` is 1
  only while partitions are assigned and not paused, and the lag series of a partition
  handed to another member is removed.

SIGTERM/SIGINT finish the current batch, commit and exit.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from shared import metrics
from shared.attempts import AttemptJournal, Mark
from shared.blobstore import LocalBlobStore
from shared.contracts import Contract, DLQRecord, Topics
from shared.errors import InputError, TransientError
from shared.imaging import sha256_hex
from shared.settings import StageSettings, metrics_port_for

log = logging.getLogger("lithowatch.runtime")

DLQ_INLINE_LIMIT_BYTES = 512 * 1024
DLQ_RECORD_OVERHEAD_BYTES = 32 * 1024  # error text, headers, key and field names
OUTPUT_HEADER_ALLOWANCE_BYTES = 1024  # the headers a stage adds to an output (result id, timestamps)


def _raise_if_out_of_memory(exc: BaseException) -> None:
    """Host or GPU memory ran out: the machine's state, so retried (transient), never dead-lettered."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.cuda's
        from shared.errors import ResourceExhausted

        raise ResourceExhausted(f"out of memory: {type(exc).__name__}: {exc}") from exc


def _header_bytes(headers: Any) -> int:
    """Bytes of a record's headers as the broker counts them (names and values; a null value is 0)."""
    return sum(len(k.encode()) + len(v or b"") for k, v in headers or [])


@dataclass(frozen=True)
class Output:
    """One message a stage wants produced."""

    topic: str
    value: Contract
    key: str


ItemResult = Sequence[Output] | InputError


class Stage(Protocol):
    """What a service core offers the runtime. Stages never touch offsets."""

    @property
    def name(self) -> str: ...

    @property
    def input_topic(self) -> str: ...

    @property
    def input_model(self) -> type[Contract]: ...

    def process_batch(self, items: Sequence[Any]) -> Sequence[ItemResult]:
        """One entry per input, in order: its outputs, or the InputError that rejects it."""
        ...


def _reason_for_validation(exc: ValidationError) -> str:
    kinds = {str(err.get("type")) for err in exc.errors()}
    if "json_invalid" in kinds or "json_type" in kinds:
        return "invalid_json"
    if "extra_forbidden" in kinds:
        return "unknown_field"
    if "missing" in kinds:
        return "missing_field"
    return "schema"


def _short_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


@dataclass
class _Polled:
    record: Any  # kafka ConsumerRecord
    received_monotonic: float


BATCH_TIME_SHARE = 0.25  # of max_poll_interval_ms that one batch may take at the measured pace
PACE_SMOOTHING = 0.3  # weight of the newest batch in the seconds-per-message average


class StageRunner:
    """Runs one stage against Kafka until stopped.

    Batches hold up to ``batch_max_messages``, fewer when the stage's measured pace
    (seconds per message, a moving average) says a full batch would take more than
    ``BATCH_TIME_SHARE`` of ``max_poll_interval_ms``: a consumer that does not poll
    within that interval is put out of its group and its batch is redelivered, so a
    slow stage (a large encoder on a CPU) would otherwise redo work and stall.
    """

    def __init__(
        self,
        stage: Stage,
        settings: StageSettings,
        consumer: KafkaConsumer | None = None,
        producer: KafkaProducer | None = None,
        routes: dict[str, metrics.Route] | None = None,
        tick: Callable[[], None] | None = None,
    ) -> None:
        from shared.kafka_io import make_consumer, make_producer

        self.stage = stage
        self.settings = settings
        self.name = stage.name
        self.group_id = f"lithowatch-{stage.name}{settings.group_suffix}"
        self.consumer = consumer or make_consumer(
            settings,
            self.group_id,
            [stage.input_topic],
            max_poll_interval_ms=settings.max_poll_interval_ms,
            session_timeout_ms=settings.session_timeout_ms,
        )
        self.producer = producer or make_producer(settings, client_id=f"lithowatch-{stage.name}")
        self.routes = routes or {}
        self.tick = tick
        self._stop = threading.Event()
        self._paused = False
        self._next_offsets: dict[TopicPartition, int] = {}
        self._last_lag_update = 0.0
        self._blobs: LocalBlobStore | None = None
        self._server: metrics.MetricsServer | None = None
        self.processed = 0
        self.seconds_per_message: float | None = None
        self._encoded: dict[int, tuple[Output, bytes]] = {}  # outputs serialised by the size check
        self._journal = AttemptJournal(Path(settings.state_dir) / "attempts", self.group_id)
        self._marks_before: dict[TopicPartition, Mark | None] = {}  # restored when a batch is given back
        self._lag_series: set[TopicPartition] = set()

    # ---- lifecycle -------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def healthy(self) -> bool:
        """Ready when consuming: joined with partitions assigned, not stopping, not paused."""
        return not self._stop.is_set() and not self._paused and bool(self.consumer.assignment())

    def start_metrics(self) -> int:
        port = metrics_port_for(self.settings, self.name)
        self._server = metrics.MetricsServer(
            self.settings.metrics_host, port, self.healthy, self.routes
        ).start()
        return self._server.port

    def run(self, install_signals: bool = True, serve_metrics: bool = True) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        if self.settings.cpu_nice:
            os.nice(self.settings.cpu_nice)
        if serve_metrics:
            port = self.start_metrics()
            log.info("%s: metrics on %s:%d", self.name, self.settings.metrics_host, port)
        try:
            while not self._stop.is_set():
                if self.tick is not None:
                    self.tick()
                batch = self._poll_batch()
                if batch:
                    self._handle(batch)
                self._update_lag()
                metrics.STAGE_UP.labels(self.name).set(1 if self.healthy() else 0)
        finally:
            metrics.STAGE_UP.labels(self.name).set(0)
            self._close()
        return 0

    def _close(self) -> None:
        try:
            self.producer.flush(timeout=10)
        except KafkaError as exc:
            log.warning("%s: final flush failed: %s", self.name, exc)
        self.producer.close(timeout=5)
        self._finish_join()
        self.consumer.close(autocommit=False)
        if self._server is not None:
            self._server.stop()
        close = getattr(self.stage, "close", None)
        if callable(close):
            close()

    def _finish_join(self, timeout_seconds: float = 15.0) -> None:
        """Complete a group join in progress before leaving.

        A member that leaves in the middle of a join can leave the group stuck on
        some brokers (seen with Tansu: the next member waited minutes); a member
        that finishes joining and then leaves hands its partitions over at once.
        Records fetched meanwhile are not processed and not committed.
        """
        deadline = time.monotonic() + timeout_seconds
        assigned = self.consumer.assignment()
        if assigned:
            return
        try:
            while not self.consumer.assignment() and time.monotonic() < deadline:
                self.consumer.poll(timeout_ms=200, max_records=1)
                for tp in self.consumer.assignment():
                    self.consumer.pause(tp)
        except KafkaError as exc:
            log.warning("%s: could not finish joining before leaving: %s", self.name, exc)

    # ---- polling ---------------------------------------------------------------------------
    def batch_limit(self) -> int:
        """Messages to take into the next batch (see the class docstring)."""
        limit = self.settings.batch_max_messages
        if self.seconds_per_message:
            budget_seconds = BATCH_TIME_SHARE * self.settings.max_poll_interval_ms / 1000.0
            limit = min(limit, max(1, int(budget_seconds / self.seconds_per_message)))
        return limit

    def _poll_batch(self) -> list[_Polled]:
        limit = self.batch_limit()
        deadline = time.monotonic() + self.settings.batch_max_wait_ms / 1000.0
        batch: list[_Polled] = []
        timeout_ms = max(self.settings.batch_max_wait_ms, 100)
        while len(batch) < limit and not self._stop.is_set():
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=limit - len(batch))
            now = time.monotonic()
            for records in polled.values():
                batch.extend(_Polled(r, now) for r in records)
            remaining_ms = int((deadline - now) * 1000)
            if not batch:
                return batch
            if remaining_ms <= 0:
                break
            timeout_ms = remaining_ms
        return batch

    def _update_lag(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_lag_update < 1.0:
            return
        self._last_lag_update = now
        assigned = self.consumer.assignment()
        for tp in self._lag_series - assigned:  # handed to another member: its series would lie
            metrics.CONSUMER_LAG.remove(self.name, tp.topic, str(tp.partition))
            self._next_offsets.pop(tp, None)
        self._lag_series &= assigned
        for tp in assigned:
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            position = self._next_offsets.get(tp)
            if position is None:
                continue
            metrics.CONSUMER_LAG.labels(self.name, tp.topic, str(tp.partition)).set(
                max(0, highwater - position)
            )
            self._lag_series.add(tp)

    # ---- one batch -------------------------------------------------------------------------
    def _handle(self, polled_batch: list[_Polled]) -> None:
        started = time.monotonic()
        batch, crashed = self._mark_attempts(polled_batch)
        dlq: list[Output] = [
            self._dlq_output(
                polled.record,
                "crashed",
                f"the stage process ended {self.settings.crash_attempts} times while handling this "
                "record alone (out of memory, a crash, or longer than max_poll_interval_ms); "
                "it is not processed again",
            )
            for polled in crashed
        ]
        batch = [*crashed, *batch]
        decoded: list[tuple[_Polled, Any]] = []
        for polled in batch[len(crashed) :]:
            value = self._decode(polled)
            if isinstance(value, Output):
                dlq.append(value)
            else:
                decoded.append((polled, value))
        attempt = 0
        while True:
            try:
                outputs = self._process(decoded)
                self._produce([*dlq, *outputs[1]], outputs[0])
                break
            except TransientError as exc:
                attempt += 1
                metrics.MESSAGES.labels(self.name, "retried").inc(len(batch))
                if attempt <= self.settings.retry_attempts:
                    delay = min(
                        self.settings.retry_backoff_seconds * 2 ** (attempt - 1),
                        self.settings.retry_backoff_max_seconds,
                    )
                    log.warning(
                        "%s: transient failure (attempt %d): %s; retry in %.1f s",
                        self.name,
                        attempt,
                        exc,
                        delay,
                    )
                    self._sleep_polling(delay)
                    if self._stop.is_set():
                        self._rewind(batch, restore_marks=True)
                        return
                    continue
                log.error(
                    "%s: still failing after %d attempts (%s); pausing and retrying the batch",
                    self.name,
                    attempt - 1,
                    exc,
                )
                self._rewind(batch, restore_marks=True)
                self._sleep_polling(self.settings.retry_backoff_max_seconds, pause=True)
                return
        if self._commit(batch):
            self._advance_marks(batch)
        elapsed = time.monotonic() - started
        per_message = elapsed / max(1, len(batch))
        self.seconds_per_message = (
            per_message
            if self.seconds_per_message is None
            else PACE_SMOOTHING * per_message + (1.0 - PACE_SMOOTHING) * self.seconds_per_message
        )
        for polled in batch:
            metrics.STAGE_LATENCY.labels(self.name).observe(
                per_message + (started - polled.received_monotonic)
            )
        metrics.BATCH_SIZE.labels(self.name).observe(len(batch))
        self.processed += len(batch)

    def _decode(self, polled: _Polled) -> Any:
        record = polled.record
        value: bytes | None = record.value
        if value is None:
            return self._dlq_output(record, "empty_message", "message has no value")
        size = len(value) + _header_bytes(record.headers)
        limit = self.settings.kafka_max_message_bytes
        if size > limit:
            return self._dlq_output(
                record, "too_large", f"message of {size} bytes (value and headers) is over {limit}"
            )
        try:
            return self.stage.input_model.model_validate_json(value)
        except ValidationError as exc:
            return self._dlq_output(record, _reason_for_validation(exc), _short_validation(exc))
        except ValueError as exc:  # e.g. invalid UTF-8
            return self._dlq_output(record, "invalid_json", str(exc))

    def _process(self, decoded: list[tuple[_Polled, Any]]) -> tuple[list[_Polled], list[Output]]:
        """Return (inputs that produced outputs, outputs incl. DLQ records)."""
        self._encoded.clear()
        if not decoded:
            return [], []
        items = [value for _, value in decoded]
        try:
            results = list(self.stage.process_batch(items))
            if len(results) != len(items):
                raise RuntimeError(f"stage returned {len(results)} results for {len(items)} inputs")
        except TransientError:
            raise
        except Exception as batch_exc:
            _raise_if_out_of_memory(batch_exc)
            log.warning(
                "%s: batch failed (%s: %s); retrying items one by one",
                self.name,
                type(batch_exc).__name__,
                batch_exc,
            )
            results = [self._process_one(value) for value in items]
        outputs: list[Output] = []
        done: list[_Polled] = []
        for (polled, _), result in zip(decoded, results, strict=True):
            if isinstance(result, InputError):
                outputs.append(self._dlq_output(polled.record, result.reason, str(result)))
            elif (oversized := self._oversized(polled.record, result)) is not None:
                outputs.append(self._dlq_output(polled.record, "output_too_large", oversized))
            else:
                outputs.extend(result)
                done.append(polled)
        return done, outputs

    def _encoded_value(self, out: Output) -> bytes:
        """The output's JSON, serialised once: by the size check when it ran on this very object."""
        cached = self._encoded.pop(id(out), None)
        if cached is not None and cached[0] is out:
            return cached[1]
        return out.value.model_dump_json().encode()

    def _oversized(self, record: Any, outputs: Sequence[Output]) -> str | None:
        """Why an output of this input cannot be produced (over the message limit), or None.

        The broker refuses such a record whatever the retries, so it is this input's
        verdict (dead-lettered with the reason), not a transient failure that would
        block the partition. Header bytes count: the input's are copied onto outputs.
        """
        limit = self.settings.kafka_max_message_bytes
        headers = _header_bytes(record.headers) + OUTPUT_HEADER_ALLOWANCE_BYTES
        for out in outputs:
            encoded = out.value.model_dump_json().encode()
            self._encoded[id(out)] = (out, encoded)
            size = len(encoded) + len(out.key) + headers
            if size > limit:
                return f"output to {out.topic} of about {size} bytes is over the {limit}-byte message limit"
        return None

    def _process_one(self, value: Any) -> ItemResult:
        try:
            return self.stage.process_batch([value])[0]
        except TransientError:
            raise
        except InputError as exc:  # raised rather than returned: still this item's verdict
            return exc
        except Exception as exc:
            _raise_if_out_of_memory(exc)
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            return InputError(f"{detail}", reason="processing_error")

    def _produce(self, outputs: list[Output], done: list[_Polled]) -> None:
        input_headers: dict[str, list[tuple[str, bytes]]] = {}
        for polled in done:
            rid = self._header(polled.record, "result_id") or (polled.record.key or b"").decode(
                errors="replace"
            )
            input_headers[rid] = list(polled.record.headers or [])
        stamp = datetime.now(UTC).isoformat().encode()
        futures = []
        try:
            for out in outputs:
                inherited = [
                    (k, v)
                    for k, v in input_headers.get(out.key, [])
                    if v is not None and not k.startswith("lw-ts-" + self.name)  # a null header is not copied
                ]
                headers = [*inherited, ("lw-ts-" + self.name, stamp)]
                if not any(k == "result_id" for k, _ in headers):
                    headers.append(("result_id", out.key.encode()))
                futures.append(
                    self.producer.send(
                        out.topic,
                        key=out.key.encode(),
                        value=self._encoded_value(out),
                        headers=headers,
                    )
                )
            self.producer.flush(timeout=30)
            for future in futures:
                future.get(timeout=30)
        except KafkaError as exc:
            from shared.errors import DependencyUnavailable

            raise DependencyUnavailable(f"produce failed: {exc}") from exc
        now = datetime.now(UTC)
        dlq_count = 0
        for out in outputs:
            if out.topic == Topics.DLQ:
                dlq_count += 1
                reason = getattr(out.value, "reason", "unknown")
                metrics.DLQ.labels(self.name, reason).inc()
                continue
            produced_at = getattr(out.value, "produced_at", None)
            if isinstance(produced_at, datetime):
                metrics.END_TO_END_LATENCY.labels(self.name).observe(
                    max(0.0, (now - produced_at).total_seconds())
                )
        metrics.MESSAGES.labels(self.name, "dlq").inc(dlq_count)
        metrics.MESSAGES.labels(self.name, "ok").inc(len(done))

    @staticmethod
    def _header(record: Any, name: str) -> str | None:
        for key, value in record.headers or []:
            if key == name and value is not None:  # a null header value (legal in Kafka) says nothing
                return bytes(value).decode(errors="replace")
        return None

    def _dlq_inline_limit(self) -> int:
        """Largest value kept inline: its base64 plus the record must fit under the message limit.

        An over-size input inlined as base64 would make a DLQ record the producer refuses,
        and the stage would retry that batch for ever.
        """
        fits = (self.settings.kafka_max_message_bytes - DLQ_RECORD_OVERHEAD_BYTES) * 3 // 4
        return max(0, min(DLQ_INLINE_LIMIT_BYTES, fits))

    def _dlq_output(self, record: Any, reason: str, error: str) -> Output:
        value: bytes = record.value or b""
        value_b64: str | None = None
        value_uri: str | None = None
        if len(value) <= self._dlq_inline_limit():
            value_b64 = base64.b64encode(value).decode("ascii")
        else:
            if self._blobs is None:
                self._blobs = LocalBlobStore(self.settings.blob_root, max_bytes=1 << 31)
            value_uri = self._blobs.put(value, sha256_hex(value), "bin")
        key: bytes | None = record.key
        result_id = self._header(record, "result_id") or (key.decode(errors="replace") if key else None)
        headers = {  # a null header value is kept as an empty string
            k: "" if v is None else bytes(v).decode(errors="replace") for k, v in (record.headers or [])
        }
        dlq = DLQRecord(
            stage=self.name,
            reason=reason,
            error=error[:2000],
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key_b64=base64.b64encode(key).decode("ascii") if key else None,
            value_b64=value_b64,
            value_uri=value_uri,
            value_bytes=len(value),
            result_id=result_id,
            headers=headers,
        )
        log.warning(
            "%s: DLQ %s@%d/%d: %s: %s",
            self.name,
            record.topic,
            record.partition,
            record.offset,
            reason,
            error[:200],
        )
        return Output(Topics.DLQ, dlq, result_id or f"{record.topic}-{record.partition}-{record.offset}")

    # ---- offsets ---------------------------------------------------------------------------
    def _commit(self, batch: list[_Polled]) -> bool:
        """Commit past the batch on the partitions still assigned; False when the commit failed.

        A partition a rebalance took away is not committed (the whole commit would be
        refused): its new owner re-reads the batch from the last commit.
        """
        assigned = self.consumer.assignment()
        offsets = {tp: last + 1 for tp, (_, last) in _offset_ranges(batch).items() if tp in assigned}
        if not offsets:
            log.warning("%s: the batch's partitions were reassigned; its new owner re-reads it", self.name)
            return False
        self._next_offsets.update(offsets)
        try:
            self.consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()})
        except KafkaError as exc:
            # A rebalance took the partitions: the new owner re-reads from the last commit.
            log.warning("%s: commit failed (%s); the batch will be redelivered", self.name, exc)
            return False
        return True

    def _rewind(self, batch: list[_Polled], restore_marks: bool = False) -> None:
        assigned = self.consumer.assignment()
        for tp, (first, _) in _offset_ranges(batch).items():
            if tp in assigned:
                self.consumer.seek(tp, first)
        if restore_marks:  # given back unprocessed, not crashed: the attempt does not count
            for tp, mark in self._marks_before.items():
                self._write_mark(tp, mark)

    # ---- attempt marks (shared/attempts.py) ------------------------------------------------
    def _write_mark(self, tp: TopicPartition, mark: Mark | None) -> None:
        """Write (or, for None, clear) a partition's mark; a file-system failure only costs the count."""
        try:
            if mark is None:
                self._journal.clear(tp.topic, tp.partition)
            else:
                self._journal.write(tp.topic, tp.partition, mark)
        except OSError as exc:
            log.warning("%s: cannot write the attempt mark of %s: %s", self.name, tp, exc)

    def _mark_attempts(self, batch: list[_Polled]) -> tuple[list[_Polled], list[_Polled]]:
        """Mark the batch as attempted; return (records to process, records set aside as crashed).

        Where a mark left by an earlier process covers a partition's first record, that
        process ended inside the range: the batch shrinks to that one record (the rest is
        sought back), whose attempt is counted, and it is set aside once it has ended the
        process ``crash_attempts`` times.
        """
        ranges = _offset_ranges(batch)
        marks = {tp: self._journal.read(tp.topic, tp.partition) for tp in ranges}
        suspect = next(
            (tp for tp, mark in marks.items() if mark is not None and mark.covers(ranges[tp][0])), None
        )
        if suspect is None:
            self._marks_before = {tp: None for tp in ranges}
            for tp, (first, last) in ranges.items():
                self._write_mark(tp, Mark(first, 1, last))
            return batch, []
        mark = marks[suspect]
        assert mark is not None
        first = ranges[suspect][0]
        record = next(p for p in batch if _tp(p) == suspect and p.record.offset == first)
        self._rewind([p for p in batch if p is not record])
        self._marks_before = {suspect: mark}
        attempts = mark.attempts_on(first)
        if attempts >= self.settings.crash_attempts:
            return [], [record]
        log.warning(
            "%s: an earlier process ended while handling %s offsets %d-%d; taking them one at a "
            "time (offset %d: attempt %d of %d)",
            self.name,
            suspect,
            mark.offset,
            mark.last,
            first,
            attempts + 1,
            self.settings.crash_attempts,
        )
        self._write_mark(suspect, Mark(first, attempts + 1, mark.last))
        return [record], []

    def _advance_marks(self, batch: list[_Polled]) -> None:
        """After a commit: clear each partition's mark, or move it on inside a suspect range."""
        for tp, (_, last) in _offset_ranges(batch).items():
            mark = self._marks_before.get(tp)
            if mark is not None and mark.last > last:
                self._write_mark(tp, Mark(last + 1, 0, mark.last))
            else:
                self._write_mark(tp, None)
        self._marks_before = {}

    def _sleep_polling(self, seconds: float, pause: bool = False) -> None:
        """Wait without leaving the group: paused partitions are polled for heartbeats.

        A rebalance during the wait can assign new partitions, which start unpaused: they
        are paused at the next poll, and any records a poll hands over are given back
        (the partition is sought to the first of them), so none is skipped by a later commit.
        """
        self.consumer.pause(*self.consumer.assignment())
        self._paused = pause
        if pause:
            metrics.STAGE_UP.labels(self.name).set(0)
        deadline = time.monotonic() + seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                self.consumer.pause(*self.consumer.assignment())  # newly assigned ones too
                timeout_ms = int(min(0.5, max(0.01, deadline - time.monotonic())) * 1000)
                polled = self.consumer.poll(timeout_ms=timeout_ms) or {}
                for tp, records in polled.items():
                    if records:
                        self.consumer.seek(tp, min(r.offset for r in records))
        finally:
            self.consumer.resume(*self.consumer.assignment())
            self._paused = False


def _tp(polled: _Polled) -> TopicPartition:
    return TopicPartition(polled.record.topic, polled.record.partition)


def _offset_ranges(batch: Sequence[_Polled]) -> dict[TopicPartition, tuple[int, int]]:
    """First and last offset of each partition's records in a batch."""
    ranges: dict[TopicPartition, tuple[int, int]] = {}
    for polled in batch:
        tp, offset = _tp(polled), polled.record.offset
        first, last = ranges.get(tp, (offset, offset))
        ranges[tp] = (min(first, offset), max(last, offset))
    return ranges
