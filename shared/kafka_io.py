"""Kafka clients built from settings, with errors translated at this one boundary.

Every Kafka client of the project is built here: producers (:func:`make_producer`),
group consumers for the stage runtime (:func:`make_consumer`), group-less readers for
tools and tests (:func:`make_reader`) and admins (:func:`make_admin`). A topic read as
state from its beginning (the compacted library topic, the DLQ listing) is read by one
:class:`TopicFollower`: assign every partition, seek to the beginning or to stored
offsets, catch up to the end offsets as of the call, then keep polling.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from shared.contracts import Topics
from shared.errors import ConfigError, DependencyUnavailable
from shared.settings import CommonSettings

log = logging.getLogger(__name__)


@functools.cache
def native_crc32c() -> bool:
    """Whether kafka-python checksums record batches in C (the ``crc32c`` package).

    Without it every produced and fetched batch is checksummed in pure Python, which
    measured ~40 % of a stage process's CPU; warned about once per process.
    """
    from kafka.record import util

    native = getattr(util, "crc32c_c", None) is not None
    if not native:
        log.warning("the crc32c package is missing: Kafka record checksums run in pure Python (slow)")
    return native


def client_options(settings: CommonSettings) -> dict[str, Any]:
    """Connection and security options common to producers, consumers and admins."""
    options: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()],
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_check_hostname"] = settings.kafka_ssl_check_hostname
        for key, value in (
            ("ssl_cafile", settings.kafka_ssl_cafile),
            ("ssl_certfile", settings.kafka_ssl_certfile),
            ("ssl_keyfile", settings.kafka_ssl_keyfile),
        ):
            if value is not None:
                options[key] = str(value)
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def make_producer(settings: CommonSettings, client_id: str = "lithowatch", **extra: Any) -> KafkaProducer:
    native_crc32c()
    options = client_options(settings)
    options.update(
        client_id=client_id,
        acks="all",
        linger_ms=2,
        max_request_size=settings.kafka_max_message_bytes,
        retries=5,
    )
    if settings.kafka_compression != "none":
        options["compression_type"] = settings.kafka_compression
    options.update(extra)
    try:
        return KafkaProducer(**options)
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka at {settings.kafka_bootstrap} is not reachable: {exc}") from exc


def make_consumer(
    settings: CommonSettings,
    group_id: str | None,
    topics: Iterable[str] = (),
    max_poll_interval_ms: int = 10_000,
    session_timeout_ms: int = 10_000,
    **extra: Any,
) -> KafkaConsumer:
    native_crc32c()
    options = client_options(settings)
    options.update(
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=max_poll_interval_ms,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=min(3000, session_timeout_ms // 3),
        fetch_max_bytes=max(52_428_800, settings.kafka_max_message_bytes),
        max_partition_fetch_bytes=max(1_048_576, settings.kafka_max_message_bytes),
    )
    options.update(extra)
    try:
        consumer = KafkaConsumer(*topics, **options)
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka at {settings.kafka_bootstrap} is not reachable: {exc}") from exc
    return consumer


def make_reader(source: CommonSettings | str, **extra: Any) -> KafkaConsumer:
    """A consumer with no group and no auto-commit, for reading partitions by assignment.

    ``source`` is the settings (connection, security, and a per-partition fetch size
    that fits the largest message) or a bare bootstrap address (tests, benchmarks and the
    demo, which know only that); ``extra`` overrides any consumer option. A position out
    of range (records deleted since it was stored) restarts at the earliest offset.
    """
    native_crc32c()
    if isinstance(source, str):
        where = source
        options: dict[str, Any] = {"bootstrap_servers": [s.strip() for s in source.split(",") if s.strip()]}
    else:
        where = source.kafka_bootstrap
        options = client_options(source)
        options["max_partition_fetch_bytes"] = max(1 << 20, source.kafka_max_message_bytes)
    options.update(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    options.update(extra)
    try:
        return KafkaConsumer(**options)
    except Exception as exc:  # kafka-python raises more than KafkaError for an unreachable bootstrap
        raise DependencyUnavailable(f"Kafka at {where} is not reachable: {exc}") from exc


def make_admin(settings: CommonSettings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(**client_options(settings), client_id="lithowatch-admin")
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka at {settings.kafka_bootstrap} is not reachable: {exc}") from exc


def ensure_topics(
    settings: CommonSettings, topics: Iterable[str] | None = None, partitions: int | None = None
) -> list[str]:
    """Create missing topics (the library topic compacted, with one partition); return those created."""
    wanted = list(topics) if topics is not None else Topics.all()
    count = partitions or settings.partitions
    admin = make_admin(settings)
    try:
        existing = set(admin.list_topics())
        created = []
        for name in wanted:
            if name in existing:
                continue
            configs = {"cleanup.policy": "compact"} if name in Topics.compacted() else {}
            parts = 1 if name in Topics.compacted() else count
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, parts, 1, topic_configs=configs)])
                created.append(name)
        return created
    except KafkaError as exc:
        raise DependencyUnavailable(f"cannot create topics: {exc}") from exc
    finally:
        admin.close()


def committed_offsets(admin: KafkaAdminClient, group_id: str) -> dict[TopicPartition, int]:
    """Committed offsets of one consumer group (kafka-python 3 returns them keyed by group)."""
    try:
        answer = admin.list_group_offsets(group_id)
    except KafkaError as exc:
        raise DependencyUnavailable(f"cannot read offsets of group {group_id}: {exc}") from exc
    per_group = answer.get(group_id, {}) if isinstance(answer, dict) else {}
    return {tp: int(meta.offset) for tp, meta in per_group.items() if meta.offset >= 0}


def consumer_groups(admin: KafkaAdminClient) -> list[str]:
    try:
        groups = admin.list_groups()
    except KafkaError as exc:
        raise DependencyUnavailable(f"cannot list consumer groups: {exc}") from exc
    names = [g["group_id"] if isinstance(g, dict) else g[0] for g in groups]
    return sorted(str(n) for n in names)


class AssignedConsumer(Protocol):
    """The consumer calls a :class:`TopicFollower` makes (a ``KafkaConsumer``, or a fake in tests)."""

    def partitions_for_topic(self, topic: str) -> set[int] | None: ...

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...

    def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...

    def position(self, partition: TopicPartition) -> int: ...

    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]: ...

    def close(self) -> None: ...


class TopicFollower:
    """Follows every partition of one topic by assignment: no group, nothing committed.

    The reader of a topic whose content is state, above all a compacted one. The
    caller places each partition with :meth:`seek` (at the next offset it stored, a
    snapshot's, or at the beginning), applies the batches :meth:`catch_up` yields until
    the end offsets *as of that call* are reached (everything written before it), then
    reads what arrives with :meth:`poll`. Offsets are the caller's to keep.
    Broker failures are :class:`~shared.errors.DependencyUnavailable`; a topic that
    does not exist is a :class:`~shared.errors.ConfigError`.
    """

    def __init__(self, consumer: AssignedConsumer, topic: str) -> None:
        self.topic = topic
        self._consumer = consumer
        try:
            found = consumer.partitions_for_topic(topic)
        except KafkaError as exc:
            raise DependencyUnavailable(f"cannot read topic {topic}: {exc}") from exc
        if not found:
            raise ConfigError(f"topic {topic} does not exist")
        self.partitions = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(self.partitions)

    @classmethod
    def open(cls, source: CommonSettings | str, topic: str, **extra: Any) -> TopicFollower:
        """A follower on its own :func:`make_reader` consumer, which :meth:`close` closes."""
        consumer = make_reader(source, **extra)
        try:
            return cls(consumer, topic)
        except BaseException:
            consumer.close()
            raise

    def end_offsets(self) -> dict[int, int]:
        """Each partition's next offset to be written, as of now."""
        try:
            highs = self._consumer.end_offsets(self.partitions)
        except KafkaError as exc:
            raise DependencyUnavailable(f"cannot read the offsets of topic {self.topic}: {exc}") from exc
        return {tp.partition: int(highs[tp]) for tp in self.partitions}

    def watermarks(self) -> dict[int, tuple[int, int]]:
        """Each partition's first offset and next offset to be written, as of now."""
        try:
            lows = self._consumer.beginning_offsets(self.partitions)
        except KafkaError as exc:
            raise DependencyUnavailable(f"cannot read the offsets of topic {self.topic}: {exc}") from exc
        highs = self.end_offsets()
        return {tp.partition: (int(lows[tp]), highs[tp.partition]) for tp in self.partitions}

    def seek(self, offsets: Mapping[int, int] | None = None) -> None:
        """Each partition to its next offset in ``offsets`` (by partition); the others to their beginning."""
        offsets = offsets or {}
        from_beginning = [tp for tp in self.partitions if tp.partition not in offsets]
        if from_beginning:
            self._consumer.seek_to_beginning(*from_beginning)
        for tp in self.partitions:
            if tp.partition in offsets:
                self._consumer.seek(tp, int(offsets[tp.partition]))

    def catch_up(
        self, timeout_seconds: float, poll_timeout_ms: int = 200, max_records: int | None = None
    ) -> Iterator[list[Any]]:
        """Batches of records until every partition reaches its end offset as of this call."""
        ends = self.end_offsets()
        deadline = time.monotonic() + timeout_seconds
        while any(self._position(tp) < ends[tp.partition] for tp in self.partitions):
            if time.monotonic() > deadline:
                raise DependencyUnavailable(
                    f"reading topic {self.topic} up to its end did not finish in {timeout_seconds:g} s"
                )
            batch = self.poll(timeout_ms=poll_timeout_ms, max_records=max_records)
            if batch:
                yield batch

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> list[Any]:
        """The records that have arrived, each partition's in offset order."""
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise DependencyUnavailable(f"cannot read topic {self.topic}: {exc}") from exc
        return [record for records in polled.values() for record in records]

    def _position(self, partition: TopicPartition) -> int:
        try:
            return int(self._consumer.position(partition))
        except KafkaError as exc:
            raise DependencyUnavailable(f"cannot read the position in topic {self.topic}: {exc}") from exc

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_to_end(settings: CommonSettings, topic: str, timeout_seconds: float = 60.0) -> Iterator[Any]:
    """Every record of ``topic`` from the beginning up to its end offsets as of the call (no group)."""
    with TopicFollower.open(settings, topic) as follower:
        follower.seek()
        for batch in follower.catch_up(timeout_seconds, poll_timeout_ms=500):
            yield from batch
