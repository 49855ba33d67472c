"""Helpers for tests and benchmarks: quick results, producing and collecting topics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from shared.contracts import Contract, SimResult
from shared.imageref import make_image_ref


def random_manhattan(rng: np.random.Generator, size_px: int = 64, n_rects: int = 6) -> np.ndarray:
    image = np.zeros((size_px, size_px), np.float32)
    for _ in range(n_rects):
        x0, y0 = rng.integers(0, size_px - 8, 2)
        w, h = rng.integers(3, max(4, size_px // 3), 2)
        image[y0 : y0 + h, x0 : x0 + w] = 1.0
    return image


def make_result(
    result_id: str,
    rng: np.random.Generator | None = None,
    size_px: int = 64,
    labels: dict[str, Any] | None = None,
) -> SimResult:
    """A small result with a random Manhattan mask and a blurred copy as its print."""
    import cv2

    rng = rng or np.random.default_rng(abs(hash(result_id)) % (2**32))
    mask = random_manhattan(rng, size_px)
    simulated = (cv2.GaussianBlur(mask, (0, 0), 1.5) > 0.5).astype(np.float32)
    return SimResult(
        result_id=result_id,
        job_id="test",
        clip_id=result_id,
        nm_per_px=4.0,
        mask=make_image_ref(mask),
        simulated=make_image_ref(simulated),
        labels=labels or {},
        produced_at=datetime.now(UTC),
    )


def produce(bootstrap: str, topic: str, messages: Iterable[Contract | tuple[str, bytes]]) -> int:
    """Produce contracts (keyed by result_id) or raw (key, bytes) pairs; return the count."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    count = 0
    try:
        for message in messages:
            if isinstance(message, tuple):
                key, value = message
            else:
                key = str(getattr(message, "result_id", None) or getattr(message, "entry_id", ""))
                value = message.model_dump_json().encode()
            producer.send(topic, key=key.encode(), value=value, headers=[("result_id", key.encode())])
            count += 1
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=5)
    return count


def collect(
    bootstrap: str,
    topics: Sequence[str],
    done: Callable[[list[Any]], bool],
    timeout_seconds: float = 60.0,
) -> list[Any]:
    """Read topics from the beginning (no group) until ``done(records)`` or the timeout."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    records: list[Any] = []
    try:
        tps = []
        for topic in topics:
            for partition in sorted(consumer.partitions_for_topic(topic) or []):
                tps.append(TopicPartition(topic, partition))
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if done(records):
                break
    finally:
        consumer.close()
    return records


def embedded_result(
    result_id: str,
    vector: np.ndarray,
    model_version: str = "test-model",
    labels: dict[str, Any] | None = None,
) -> Any:
    """An EmbeddedResult around ``vector`` (normalised here), with small images."""
    from shared.contracts import EmbeddedResult, Hashes, Transform, Vector

    base = make_result(result_id, labels=labels)
    unit = np.asarray(vector, dtype=np.float32) / float(np.linalg.norm(vector))
    return EmbeddedResult(
        **base.model_dump(exclude={"schema_version"}),
        hashes=Hashes(exact="0" * 64),
        aligned_simulated=base.simulated,
        transform=Transform.identity(),
        embedding=Vector.from_array(unit),
        model_version=model_version,
    )


def library_entry(
    entry_id: str, vector: np.ndarray, model_version: str = "test-model", labels: dict[str, Any] | None = None
) -> Any:
    from shared.contracts import LibraryEntry, Vector

    unit = np.asarray(vector, dtype=np.float32) / float(np.linalg.norm(vector))
    return LibraryEntry(
        entry_id=entry_id, vector=Vector.from_array(unit), model_version=model_version, labels=labels or {}
    )
