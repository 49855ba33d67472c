"""Follows the library topic into a :class:`LibraryState`, with snapshots.

A replica starts from the newest snapshot (if any, and of the expected model
version), replays the topic from the snapshot's offsets, and only then starts
scoring, so every replica that read the same records holds the same index.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from shared import metrics
from shared.contracts import LibraryEntry, Topics
from shared.errors import ConfigError, ContractError, DependencyUnavailable
from shared.index import IndexSettings, LibraryState, find_snapshot
from shared.kafka_io import client_options
from shared.settings import CommonSettings

log = logging.getLogger("lithowatch.novelty.library")


class LibraryFeed:
    def __init__(
        self,
        settings: CommonSettings,
        model_version: str | None = None,
        snapshot_dir: Path | None = None,
        index_settings: IndexSettings | None = None,
        snapshot_interval_seconds: float = 300.0,
        on_applied: Callable[[LibraryEntry], None] | None = None,
    ) -> None:
        self.settings = settings
        self.model_version = model_version
        self.snapshot_dir = snapshot_dir
        self.index_settings = index_settings
        self.snapshot_interval_seconds = snapshot_interval_seconds
        self.on_applied = on_applied
        self.state: LibraryState | None = None
        self.refused = 0
        self._dirty = False
        self._last_snapshot = time.monotonic()
        self._consumer: KafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []

    # ---- start-up ---------------------------------------------------------------------------
    def restore(self) -> None:
        if self.snapshot_dir is None or find_snapshot(self.snapshot_dir) is None:
            return
        if self.model_version is None:
            log.warning(
                "snapshot in %s ignored: no model version configured to check it against", self.snapshot_dir
            )
            return
        try:
            self.state = LibraryState.restore(
                self.snapshot_dir, model_version=self.model_version, settings=self.index_settings
            )
            log.info("restored %d library entries from %s", len(self.state), self.snapshot_dir)
        except ConfigError as exc:
            log.warning("snapshot not used (%s); replaying the whole library topic", exc)

    def start(self, catch_up_timeout_seconds: float = 120.0) -> None:
        self.restore()
        try:
            self._consumer = KafkaConsumer(
                **client_options(self.settings),
                enable_auto_commit=False,
                max_partition_fetch_bytes=max(1 << 20, self.settings.kafka_max_message_bytes),
            )
            parts = self._consumer.partitions_for_topic(Topics.LIBRARY) or set()
        except KafkaError as exc:
            raise DependencyUnavailable(f"cannot read the library topic: {exc}") from exc
        if not parts:
            raise DependencyUnavailable(f"topic {Topics.LIBRARY} does not exist")
        self._partitions = [TopicPartition(Topics.LIBRARY, p) for p in sorted(parts)]
        self._consumer.assign(self._partitions)
        offsets = self.state.next_offsets if self.state is not None else {}
        for tp in self._partitions:
            self._consumer.seek(tp, offsets.get(tp.partition, 0))
        self.catch_up(catch_up_timeout_seconds)

    def catch_up(self, timeout_seconds: float) -> None:
        """Apply records until the topic's end offsets as of now are reached."""
        assert self._consumer is not None
        ends = self._consumer.end_offsets(self._partitions)
        deadline = time.monotonic() + timeout_seconds
        while any(self._consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise DependencyUnavailable("library topic replay did not finish in time")
            self.poll(timeout_ms=200)
        log.info("library caught up: %d entries", len(self.state) if self.state else 0)

    # ---- steady state -----------------------------------------------------------------------
    def poll(self, timeout_ms: int = 0) -> int:
        assert self._consumer is not None
        applied = 0
        for records in self._consumer.poll(timeout_ms=timeout_ms, max_records=2000).values():
            for record in records:
                applied += self._apply(record.value, record.partition, record.offset)
        if applied:
            self._dirty = True
            self._update_gauges()
        self.maybe_snapshot()
        return applied

    def _apply(self, value: bytes | None, partition: int, offset: int) -> int:
        try:
            entry = LibraryEntry.model_validate_json(value or b"")
        except (ValidationError, ValueError) as exc:
            self.refused += 1
            log.warning("library record %d/%d is not a library entry: %s", partition, offset, exc)
            return 0
        if self.state is None:
            if entry.op == "delete" or entry.vector is None:
                return 0
            if self.model_version is not None and entry.model_version != self.model_version:
                self.refused += 1
                log.warning(
                    "library entry %s of model %s refused (expecting %s)",
                    entry.entry_id,
                    entry.model_version,
                    self.model_version,
                )
                return 0
            self.state = LibraryState(entry.model_version, entry.vector.dim, self.index_settings)
        try:
            self.state.apply(entry, partition, offset)
        except ContractError as exc:
            self.refused += 1
            log.warning("library entry %s refused: %s", entry.entry_id, exc)
            return 0
        if self.on_applied is not None:
            self.on_applied(entry)
        return 1

    def _update_gauges(self) -> None:
        if self.state is not None:
            metrics.INDEX_SIZE.set(len(self.state))
            metrics.LIBRARY_PROVISIONAL.set(len(self.state.provisional()))

    def maybe_snapshot(self, force: bool = False) -> Path | None:
        if self.snapshot_dir is None or self.state is None or not self._dirty:
            return None
        if not force and time.monotonic() - self._last_snapshot < self.snapshot_interval_seconds:
            return None
        path = self.state.snapshot(self.snapshot_dir)
        self._dirty = False
        self._last_snapshot = time.monotonic()
        log.info("library snapshot written: %s (%d entries)", path, len(self.state))
        return path

    def close(self) -> None:
        try:
            self.maybe_snapshot(force=True)
        finally:
            if self._consumer is not None:
                self._consumer.close()
