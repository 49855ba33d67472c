"""A polled batch as the runtime tracks it: records, their offset ranges, and attempt marks.

:class:`AttemptMarks` is the runtime's use of the attempt journal (:mod:`shared.attempts`):
before a batch is handled each of its partitions is marked with the offsets being
attempted; a mark found at the start of the next batch means an earlier process ended
inside that range (out of memory, a native crash, longer than ``max_poll_interval_ms``),
so the records are taken one at a time and one that ended the process
``crash_attempts`` times is set aside, to be dead-lettered as ``crashed``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kafka import TopicPartition

from shared.attempts import AttemptJournal, Mark

log = logging.getLogger("lithowatch.runtime")


@dataclass
class Polled:
    record: Any  # kafka ConsumerRecord
    received_monotonic: float


def partition_of(polled: Polled) -> TopicPartition:
    return TopicPartition(polled.record.topic, polled.record.partition)


def offset_ranges(batch: Sequence[Polled]) -> dict[TopicPartition, tuple[int, int]]:
    """First and last offset of each partition's records in a batch."""
    ranges: dict[TopicPartition, tuple[int, int]] = {}
    for polled in batch:
        tp, offset = partition_of(polled), polled.record.offset
        first, last = ranges.get(tp, (offset, offset))
        ranges[tp] = (min(first, offset), max(last, offset))
    return ranges


class AttemptMarks:
    """Marks written around each batch; the marks before it are kept to be restored or advanced."""

    def __init__(self, journal: AttemptJournal, crash_attempts: int, stage: str) -> None:
        self.journal = journal
        self.crash_attempts = crash_attempts
        self.stage = stage
        self._before: dict[TopicPartition, Mark | None] = {}  # restored when a batch is given back

    def write(self, tp: TopicPartition, mark: Mark | None) -> None:
        """Write (or, for None, clear) a partition's mark; a file-system failure only costs the count."""
        try:
            if mark is None:
                self.journal.clear(tp.topic, tp.partition)
            else:
                self.journal.write(tp.topic, tp.partition, mark)
        except OSError as exc:
            log.warning("%s: cannot write the attempt mark of %s: %s", self.stage, tp, exc)

    def begin(self, batch: list[Polled]) -> tuple[list[Polled], list[Polled], list[Polled]]:
        """Mark the batch as attempted; return (records to process, records set aside as crashed,
        records to give back to the consumer unprocessed).

        Where a mark left by an earlier process covers a partition's first record, that
        process ended inside the range: the batch shrinks to that one record (the rest is
        given back), whose attempt is counted, and it is set aside once it has ended the
        process ``crash_attempts`` times.
        """
        ranges = offset_ranges(batch)
        marks = {tp: self.journal.read(tp.topic, tp.partition) for tp in ranges}
        suspect = next(
            (tp for tp, mark in marks.items() if mark is not None and mark.covers(ranges[tp][0])), None
        )
        if suspect is None:
            self._before = {tp: None for tp in ranges}
            for tp, (first, last) in ranges.items():
                self.write(tp, Mark(first, 1, last))
            return batch, [], []
        mark = marks[suspect]
        assert mark is not None
        first = ranges[suspect][0]
        record = next(p for p in batch if partition_of(p) == suspect and p.record.offset == first)
        given_back = [p for p in batch if p is not record]
        self._before = {suspect: mark}
        attempts = mark.attempts_on(first)
        if attempts >= self.crash_attempts:
            return [], [record], given_back
        log.warning(
            "%s: an earlier process ended while handling %s offsets %d-%d; taking them one at a "
            "time (offset %d: attempt %d of %d)",
            self.stage,
            suspect,
            mark.offset,
            mark.last,
            first,
            attempts + 1,
            self.crash_attempts,
        )
        self.write(suspect, Mark(first, attempts + 1, mark.last))
        return [record], [], given_back

    def restore(self) -> None:
        """The batch was given back unprocessed, not crashed: its attempt does not count."""
        for tp, mark in self._before.items():
            self.write(tp, mark)

    def advance(self, batch: list[Polled]) -> None:
        """After a commit: clear each partition's mark, or move it on inside a suspect range."""
        for tp, (_, last) in offset_ranges(batch).items():
            mark = self._before.get(tp)
            if mark is not None and mark.last > last:
                self.write(tp, Mark(last + 1, 0, mark.last))
            else:
                self.write(tp, None)
        self._before = {}
