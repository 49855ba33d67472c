"""Kafka clients built from settings, with errors translated at this one boundary."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from shared.contracts import Topics
from shared.errors import DependencyUnavailable
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


def read_to_end(settings: CommonSettings, topic: str, timeout_seconds: float = 60.0) -> Iterator[Any]:
    """Every record of ``topic`` from the beginning up to its end offsets as of the call (no group)."""
    from shared.errors import ConfigError

    try:
        consumer = KafkaConsumer(**client_options(settings), enable_auto_commit=False)
    except Exception as exc:  # kafka-python raises more than KafkaError for an unreachable bootstrap
        raise DependencyUnavailable(f"Kafka at {settings.kafka_bootstrap} is not reachable: {exc}") from exc
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise ConfigError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_seconds
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise DependencyUnavailable(f"reading {topic} timed out")
            for records in consumer.poll(timeout_ms=500).values():
                yield from records
    finally:
        consumer.close()
