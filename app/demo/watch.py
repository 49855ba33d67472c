"""Watching the pipeline's outputs and metrics while the demo streams."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from shared.contracts import (
    AlertRecord,
    Contract,
    DLQRecord,
    DuplicateRecord,
    ExplanationRecord,
    ScoreRecord,
    Topics,
)
from shared.kafka_io import make_reader
from shared.settings import CommonSettings

_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\}\s+(?P<value>[-+0-9.eE]+|NaN)$")


def scrape(url: str, timeout_seconds: float = 1.0) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text exposition as {(name, labels): value}; empty when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            text = response.read().decode()
    except OSError:
        return {}
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = frozenset(
                tuple(p.split("=", 1)) for p in re.findall(r'[a-z_]+="[^"]*"', match["labels"])
            )
            labels = frozenset((k, v.strip('"')) for k, v in labels)
            samples[(match["name"], labels)] = float(match["value"])
    return samples


def metric_sum(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **want: str) -> float:
    return sum(
        v
        for (n, labels), v in samples.items()
        if n == name and all((k, val) in labels for k, val in want.items())
    )


@dataclass
class OutputWatcher:
    """Reads the output topics (no consumer group) into per-result outcomes. ``bootstrap`` is an
    address or the full settings (an external broker's SSL/SASL settings included)."""

    bootstrap: CommonSettings | str
    scores: dict[str, ScoreRecord] = field(default_factory=dict)
    duplicates: dict[str, DuplicateRecord] = field(default_factory=dict)
    alerts: dict[str, AlertRecord] = field(default_factory=dict)
    explanations: dict[str, ExplanationRecord] = field(default_factory=dict)
    dlq: dict[str, DLQRecord] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> OutputWatcher:
        self._thread = threading.Thread(target=self._run, name="demo-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        consumer = make_reader(self.bootstrap)
        topics: dict[str, tuple[type[Contract], dict[str, Any]]] = {
            Topics.SCORES: (ScoreRecord, self.scores),
            Topics.DUPLICATES: (DuplicateRecord, self.duplicates),
            Topics.ALERTS: (AlertRecord, self.alerts),
            Topics.EXPLANATIONS: (ExplanationRecord, self.explanations),
            Topics.DLQ: (DLQRecord, self.dlq),
        }
        try:
            tps = [
                TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])
            ]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                for tp, records in consumer.poll(timeout_ms=200).items():
                    model, target = topics[tp.topic]
                    for record in records:
                        try:
                            value = model.from_wire(record.value)
                        except ValueError:
                            continue
                        key = getattr(value, "result_id", None) or f"{tp.partition}-{record.offset}"
                        target[str(key)] = value
        finally:
            consumer.close()

    def accounted(self) -> set[str]:
        return set(self.scores) | set(self.duplicates) | set(self.dlq)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def wait_accounted(
    watcher: OutputWatcher, expected: set[str], timeout_seconds: float, on_tick: object = None
) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if expected <= watcher.accounted():
            return True
        time.sleep(0.5)
    return expected <= watcher.accounted()
