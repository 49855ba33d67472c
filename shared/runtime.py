"""The one stage runtime every service uses.

Loop: ``stage.tick()`` -> poll a batch (by size and wait time) -> decode ->
``stage.process_batch`` -> produce outputs keyed by ``result_id`` -> flush -> commit the
consumed offsets; ``stage.close()`` once at the end. Offsets are committed only after every
output is acknowledged (at least once). The stage protocol is :mod:`shared.stage` (no Kafka);
DLQ records and size checks are :mod:`shared.dead_letters`, the produce phase
:mod:`shared.produce`, batches and attempt marks :mod:`shared.batches`.

Error policy, by phase, in one place:
- decode: invalid JSON, schema violations, a newer major version, over-size messages ->
  a DLQ record with the reason and the original bytes; the batch goes on (fields a
  newer minor version added are ignored: readers are tolerant, ``docs/contracts.md``);
- every dead letter of a result on its way to a verdict (inputs of dedupe, align,
  embed, novelty) also produces the result's ``dead_lettered`` verdict
  (:mod:`shared.verdicts`), sent and acknowledged with the DLQ record before the commit;
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

import logging
import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from shared import metrics
from shared.attempts import AttemptJournal
from shared.batches import AttemptMarks, Polled, offset_ranges
from shared.dead_letters import DeadLetters, OutputSizes, decode
from shared.errors import InputError, TransientError
from shared.produce import count_produced, send_outputs
from shared.settings import StageSettings, metrics_port_for
from shared.stage import ItemResult, Output, Stage

log = logging.getLogger("lithowatch.runtime")


def _raise_if_out_of_memory(exc: BaseException) -> None:
    """Host or GPU memory ran out: the machine's state, so retried (transient), never dead-lettered."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.cuda's
        from shared.errors import ResourceExhausted

        raise ResourceExhausted(f"out of memory: {type(exc).__name__}: {exc}") from exc


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
        self._stop = threading.Event()
        self._paused = False
        self._last_beat = time.monotonic()
        self._next_offsets: dict[TopicPartition, int] = {}
        self._last_lag_update = 0.0
        self._server: metrics.MetricsServer | None = None
        self.processed = 0
        self.seconds_per_message: float | None = None
        self._dead_letters = DeadLetters(stage.name, settings.kafka_max_message_bytes, settings.blob_root)
        self._sizes = OutputSizes(settings.kafka_max_message_bytes)
        self._marks = AttemptMarks(
            AttemptJournal(Path(settings.state_dir) / "attempts", self.group_id),
            settings.crash_attempts,
            stage.name,
        )
        self._lag_series: set[TopicPartition] = set()

    # ---- lifecycle -------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def healthy(self) -> bool:
        """Ready when consuming: joined with partitions assigned, not stopping, not paused."""
        return not self._stop.is_set() and not self._paused and bool(self.consumer.assignment())

    def alive(self) -> bool:
        """Live while the loop turns: it beats at every poll, batch and back-off step, so a loop
        silent for three poll intervals (a minute at least) is wedged. Paused, rebalancing or
        without partitions is still alive (``/livez``); only ``/healthz`` says ready."""
        limit_seconds = max(60.0, 3 * self.settings.max_poll_interval_ms / 1000.0)
        return time.monotonic() - self._last_beat < limit_seconds

    def start_metrics(self) -> int:
        port = metrics_port_for(self.settings, self.name)
        self._server = metrics.MetricsServer(
            self.settings.metrics_host, port, self.healthy, self.routes, alive=self.alive
        ).start()
        return self._server.port

    def run(self, install_signals: bool = True, serve_metrics: bool = True) -> int:
        """Consume until stopped; the stage is closed when this returns, however it ends."""
        try:
            if install_signals:
                signal.signal(signal.SIGTERM, self.request_stop)
                signal.signal(signal.SIGINT, self.request_stop)
            if self.settings.cpu_nice:
                os.nice(self.settings.cpu_nice)
            if serve_metrics:
                port = self.start_metrics()
                log.info("%s: metrics on %s:%d", self.name, self.settings.metrics_host, port)
        except BaseException:
            self.stage.close()
            raise
        try:
            while not self._stop.is_set():
                self._last_beat = time.monotonic()
                self.stage.tick()
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
            try:
                self.producer.flush(timeout=10)
            except KafkaError as exc:
                log.warning("%s: final flush failed: %s", self.name, exc)
            self.producer.close(timeout=5)
            self._finish_join()
            self.consumer.close(autocommit=False)
            if self._server is not None:
                self._server.stop()
        finally:
            self.stage.close()

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

    def _poll_batch(self) -> list[Polled]:
        limit = self.batch_limit()
        deadline = time.monotonic() + self.settings.batch_max_wait_ms / 1000.0
        batch: list[Polled] = []
        timeout_ms = max(self.settings.batch_max_wait_ms, 100)
        while len(batch) < limit and not self._stop.is_set():
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=limit - len(batch))
            now = time.monotonic()
            for records in polled.values():
                batch.extend(Polled(r, now) for r in records)
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
    def _handle(self, polled_batch: list[Polled]) -> None:
        started = time.monotonic()
        batch, crashed, given_back = self._marks.begin(polled_batch)
        self._rewind(given_back)
        dlq: list[Output] = [
            out
            for polled in crashed
            for out in self._dead_letters.outputs(
                polled.record,
                "crashed",
                f"the stage process ended {self.settings.crash_attempts} times while handling this "
                "record alone (out of memory, a crash, or longer than max_poll_interval_ms); "
                "it is not processed again",
            )
        ]
        batch = [*crashed, *batch]
        decoded: list[tuple[Polled, Any]] = []
        for polled in batch[len(crashed) :]:
            value = self._decode(polled)
            if isinstance(value, list):
                dlq.extend(value)
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
            self._marks.advance(batch)
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

    def _decode(self, polled: Polled) -> Any:
        """The input's contract, or its DLQ outputs (empty, over the limit, invalid)."""
        value = decode(polled.record, self.stage.input_model, self.settings.kafka_max_message_bytes)
        if isinstance(value, tuple):
            return self._dead_letters.outputs(polled.record, *value)
        return value

    def _process(self, decoded: list[tuple[Polled, Any]]) -> tuple[list[Polled], list[Output]]:
        """Return (inputs that produced outputs, outputs incl. DLQ records)."""
        self._sizes.clear()
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
        done: list[Polled] = []
        for (polled, _), result in zip(decoded, results, strict=True):
            if isinstance(result, InputError):
                outputs.extend(self._dead_letters.outputs(polled.record, result.reason, str(result)))
            elif (oversized := self._sizes.oversized(polled.record, result)) is not None:
                outputs.extend(self._dead_letters.outputs(polled.record, "output_too_large", oversized))
            else:
                outputs.extend(result)
                done.append(polled)
        return done, outputs

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

    def _produce(self, outputs: list[Output], done: list[Polled]) -> None:
        """Send every output and wait for its ack (see :mod:`shared.produce`), then count them."""
        send_outputs(self.producer, self.name, outputs, [p.record for p in done], self._sizes.encoded)
        count_produced(self.name, outputs, len(done))

    # ---- offsets ---------------------------------------------------------------------------
    def _commit(self, batch: list[Polled]) -> bool:
        """Commit past the batch on the partitions still assigned; False when the commit failed.

        A partition a rebalance took away is not committed (the whole commit would be
        refused): its new owner re-reads the batch from the last commit.
        """
        assigned = self.consumer.assignment()
        offsets = {tp: last + 1 for tp, (_, last) in offset_ranges(batch).items() if tp in assigned}
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

    def _rewind(self, batch: list[Polled], restore_marks: bool = False) -> None:
        assigned = self.consumer.assignment()
        for tp, (first, _) in offset_ranges(batch).items():
            if tp in assigned:
                self.consumer.seek(tp, first)
        if restore_marks:  # given back unprocessed, not crashed: the attempt does not count
            self._marks.restore()

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
                self._last_beat = time.monotonic()
                self.consumer.pause(*self.consumer.assignment())  # newly assigned ones too
                timeout_ms = int(min(0.5, max(0.01, deadline - time.monotonic())) * 1000)
                polled = self.consumer.poll(timeout_ms=timeout_ms) or {}
                for tp, records in polled.items():
                    if records:
                        self.consumer.seek(tp, min(r.offset for r in records))
        finally:
            self.consumer.resume(*self.consumer.assignment())
            self._paused = False
