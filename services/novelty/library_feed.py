"""Follows the library topic into a :class:`LibraryState`, with snapshots.

A replica starts from the newest snapshot (if any, of the expected model version,
and taken from the topic as it is now), replays the topic from the snapshot's
offsets, and only then starts scoring, so every replica that read the same records
holds the same index.

A snapshot records the library topic's id (Kafka's topic id, KIP-516, when the
broker reports one) beside its offsets. At start the feed reads the topic's id and
watermarks and refuses a snapshot taken from another incarnation of the topic
(deleted and recreated since: another id, or offsets past the end or before the
start; see :func:`shared.index.stale_reason`): it logs why, counts
``lithowatch_library_events_total{event="snapshot_refused"}`` (as for any snapshot not
used: another model, damaged) and rebuilds from the topic, so the library now on the
topic is what is served. A snapshot that cannot
be written is logged and tried again at the next interval; the service goes on.
Provisional entries are bounded (``max_provisional``); evictions are counted as
``event="provisional_evicted"``.

The topic is read by :class:`shared.kafka_io.TopicFollower` (every partition assigned,
sought to the snapshot's offsets or the beginning, caught up to the end offsets as of
start, then polled); tests hand the feed a follower over in-memory logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared import metrics
from shared.contracts import LibraryEntry, Topics
from shared.errors import ConfigError, ContractError, DependencyUnavailable
from shared.index import IndexSettings, LibraryState, TopicState, find_snapshot
from shared.kafka_io import TopicFollower, make_admin
from shared.settings import CommonSettings

log = logging.getLogger("lithowatch.novelty.library")

POLL_MAX_RECORDS = 2000


def library_topic_id(settings: CommonSettings, topic: str = Topics.LIBRARY) -> str | None:
    """A library topic's id, or None when the broker reports none (or cannot be asked)."""
    try:
        admin = make_admin(settings)
    except DependencyUnavailable as exc:
        log.warning("library topic id unknown (%s): snapshots are checked by offsets alone", exc)
        return None
    try:
        described = admin.describe_topics([topic])
    except Exception as exc:  # kafka-python raises more than KafkaError for an unsupported request
        log.warning("library topic id unknown (%s): snapshots are checked by offsets alone", exc)
        return None
    finally:
        admin.close()
    for described_topic in described:
        if not isinstance(described_topic, dict) or described_topic.get("name") != topic:
            continue
        topic_id = str(described_topic.get("topic_id") or "")
        return topic_id if topic_id.strip("0-") else None  # the all-zero id means none
    return None


class LibraryFeed:
    def __init__(
        self,
        settings: CommonSettings,
        model_version: str | None = None,
        snapshot_dir: Path | None = None,
        index_settings: IndexSettings | None = None,
        snapshot_interval_seconds: float = 300.0,
        on_applied: Callable[[LibraryEntry], None] | None = None,
        max_provisional: int | None = None,
        open_follower: Callable[[], TopicFollower] | None = None,
        read_topic_id: Callable[[], str | None] | None = None,
        topic: str = Topics.LIBRARY,
    ) -> None:
        """``open_follower`` and ``read_topic_id`` default to ``topic`` on the settings' broker."""
        self.settings = settings
        self.library_topic = topic
        self.model_version = model_version
        self.snapshot_dir = snapshot_dir
        self.index_settings = index_settings
        self.snapshot_interval_seconds = snapshot_interval_seconds
        self.on_applied = on_applied
        self.max_provisional = max_provisional
        self.state: LibraryState | None = None
        self.topic: TopicState | None = None
        self.refused = 0
        self._evicted_reported = 0
        self._dirty = False
        self._last_snapshot = time.monotonic()
        self._open_follower = open_follower or (lambda: TopicFollower.open(settings, topic))
        self._read_topic_id = read_topic_id or (lambda: library_topic_id(settings, topic))
        self._follower: TopicFollower | None = None
        for event in ("provisional_evicted", "snapshot_refused"):  # export zeros
            metrics.LIBRARY_EVENTS.labels(event)

    # ---- start-up ---------------------------------------------------------------------------
    def restore(self) -> None:
        """Start from the current snapshot, unless it is missing, of another model or stale."""
        if self.snapshot_dir is None:
            return
        try:
            if find_snapshot(self.snapshot_dir) is None:
                return
        except ConfigError as exc:
            self._refuse_snapshot(exc)
            return
        if self.model_version is None:
            log.warning(
                "snapshot in %s ignored: no model version configured to check it against", self.snapshot_dir
            )
            return
        try:
            self._set_state(
                LibraryState.restore(
                    self.snapshot_dir,
                    model_version=self.model_version,
                    settings=self.index_settings,
                    topic=self.topic,
                    max_provisional=self.max_provisional,
                )
            )
        except ConfigError as exc:
            self._refuse_snapshot(exc)
            return
        assert self.state is not None
        log.info("restored %d library entries from %s", len(self.state), self.snapshot_dir)

    def _refuse_snapshot(self, exc: ConfigError) -> None:
        metrics.LIBRARY_EVENTS.labels("snapshot_refused").inc()
        log.warning("snapshot not used (%s); replaying the whole library topic", exc)

    def _set_state(self, state: LibraryState) -> LibraryState:
        self.state = state
        self._evicted_reported = 0
        return state

    def _topic_state(self) -> TopicState:
        """The library topic's id and (low, high) watermarks per partition, as of now."""
        assert self._follower is not None
        return TopicState(topic_id=self._read_topic_id(), watermarks=self._follower.watermarks())

    def start(self, catch_up_timeout_seconds: float = 120.0) -> None:
        try:
            self._follower = self._open_follower()
        except ConfigError as exc:  # no topic yet: whoever starts the stack creates it, so wait
            raise DependencyUnavailable(str(exc)) from exc
        self.topic = self._topic_state()
        self.restore()
        self._update_gauges()
        self._follower.seek(self.state.next_offsets if self.state is not None else None)
        self.catch_up(catch_up_timeout_seconds)

    def catch_up(self, timeout_seconds: float) -> None:
        """Apply records until the topic's end offsets as of now are reached."""
        assert self._follower is not None
        for records in self._follower.catch_up(timeout_seconds, max_records=POLL_MAX_RECORDS):
            self._apply_records(records)
        log.info(
            "library %s caught up: %d entries of model %s",
            self.library_topic,
            len(self.state) if self.state else 0,
            self.state.model_version if self.state else self.model_version,
        )

    def _apply_tombstone(self, key: bytes | None, partition: int, offset: int) -> int:
        state = self.state
        if state is None or not key:
            return 0
        try:
            entry = LibraryEntry(entry_id=key.decode(), op="delete", model_version=state.model_version)
            state.apply(entry, partition, offset)
        except (ValidationError, ValueError, ContractError) as exc:
            self.refused += 1
            log.warning("library tombstone %d/%d refused: %s", partition, offset, exc)
            return 0
        if self.on_applied is not None:
            self.on_applied(entry)
        return 1

    # ---- steady state -----------------------------------------------------------------------
    def poll(self, timeout_ms: int = 0) -> int:
        assert self._follower is not None
        return self._apply_records(self._follower.poll(timeout_ms=timeout_ms, max_records=POLL_MAX_RECORDS))

    def _apply_records(self, records: list[Any]) -> int:
        applied = 0
        for record in records:
            applied += self._apply(record.value, record.partition, record.offset, record.key)
        if applied:
            self._dirty = True
            self._update_gauges()
        self.maybe_snapshot()
        return applied

    def _apply(self, value: bytes | None, partition: int, offset: int, key: bytes | None = None) -> int:
        if value is None:  # a tombstone (``library drop``): compaction removes the entry for good
            return self._apply_tombstone(key, partition, offset)
        try:
            entry = LibraryEntry.from_wire(value)
        except (ValidationError, ValueError) as exc:
            self.refused += 1
            log.warning("library record %d/%d is not a library entry: %s", partition, offset, exc)
            return 0
        state = self.state
        if state is None:
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
            state = self._set_state(
                LibraryState(
                    entry.model_version,
                    entry.vector.dim,
                    self.index_settings,
                    max_provisional=self.max_provisional,
                )
            )
        try:
            state.apply(entry, partition, offset)
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
            metrics.LIBRARY_PROVISIONAL.set(self.state.provisional_count)
            evicted = self.state.evicted_total - self._evicted_reported
            if evicted > 0:
                metrics.LIBRARY_EVENTS.labels("provisional_evicted").inc(evicted)
                self._evicted_reported = self.state.evicted_total

    def maybe_snapshot(self, force: bool = False) -> Path | None:
        if self.snapshot_dir is None or self.state is None or not self._dirty:
            return None
        if not force and time.monotonic() - self._last_snapshot < self.snapshot_interval_seconds:
            return None
        self._last_snapshot = time.monotonic()
        try:
            path = self.state.snapshot(
                self.snapshot_dir, topic_id=self.topic.topic_id if self.topic is not None else None
            )
        except ConfigError as exc:  # a snapshot only shortens the next start: go on without it
            log.error(
                "library snapshot not written (tried again in %.0f s): %s",
                self.snapshot_interval_seconds,
                exc,
            )
            return None
        self._dirty = False
        log.info("library snapshot written: %s (%d entries)", path, len(self.state))
        return path

    def close(self) -> None:
        try:
            self.maybe_snapshot(force=True)
        finally:
            if self._follower is not None:
                self._follower.close()


class LibraryFeeds:
    """The libraries of every model in flight: one :class:`LibraryFeed` per library topic.

    During a model switch (blue/green, :mod:`shared.index.topics`) the novelty service
    follows the old model's library topic and the new one's at once, each feed holding one
    model's library; a result is scored against the library of the model that embedded it
    (:meth:`state_for`), and a novel result's provisional entry goes back to that library's
    topic (:meth:`topic_for`). With one topic this is the single library it always was.
    """

    def __init__(self, feeds: list[LibraryFeed]) -> None:
        if not feeds:
            raise ConfigError("the novelty service needs at least one library topic")
        topics = [feed.library_topic for feed in feeds]
        if len(set(topics)) != len(topics):
            raise ConfigError(f"a library topic is named twice: {', '.join(topics)}")
        self.feeds = feeds

    @property
    def state(self) -> LibraryState | None:
        """The first topic's library (the one a single-model service serves)."""
        return self.feeds[0].state

    def states(self) -> list[LibraryState]:
        return [feed.state for feed in self.feeds if feed.state is not None]

    def state_for(self, model_version: str) -> LibraryState | None:
        """The library of ``model_version``'s vectors, or None when no topic holds one."""
        for feed in self.feeds:
            if feed.state is not None and feed.state.model_version == model_version:
                return feed.state
        return None

    def topic_for(self, model_version: str) -> str:
        """The topic holding ``model_version``'s library (where its provisional entries go)."""
        for feed in self.feeds:
            if feed.state is not None and feed.state.model_version == model_version:
                return feed.library_topic
        for feed in self.feeds:  # expected but still empty
            if feed.model_version == model_version:
                return feed.library_topic
        return self.feeds[0].library_topic

    def models(self) -> list[str]:
        """The model versions whose libraries are held, in topic order."""
        return [state.model_version for state in self.states()]

    def start(self, catch_up_timeout_seconds: float = 120.0) -> None:
        for feed in self.feeds:
            feed.start(catch_up_timeout_seconds)
        held = self.models()
        if len(set(held)) != len(held):
            raise ConfigError(
                "two library topics hold the same model ("
                + ", ".join(f"{f.library_topic}: {f.state.model_version}" for f in self.feeds if f.state)
                + "); follow one library topic per model"
            )
        self._update_gauges()

    def poll(self, timeout_ms: int = 0) -> int:
        applied = sum(feed.poll(timeout_ms=timeout_ms) for feed in self.feeds)
        if applied and len(self.feeds) > 1:
            self._update_gauges()
        return applied

    def _update_gauges(self) -> None:
        if len(self.feeds) > 1:  # every feed sets the size of its own; the gauges show the sum
            metrics.INDEX_SIZE.set(sum(len(state) for state in self.states()))
            metrics.LIBRARY_PROVISIONAL.set(sum(state.provisional_count for state in self.states()))

    def close(self) -> None:
        errors: list[BaseException] = []
        for feed in self.feeds:
            try:
                feed.close()
            except Exception as exc:  # close every feed, then report the first failure
                errors.append(exc)
        if errors:
            raise errors[0]
