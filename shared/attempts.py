"""Per-offset attempt journal: a record that keeps ending the stage process is found and set aside.

A record that kills its process (out of memory, a native crash, an item slower than
``max_poll_interval_ms``) is redelivered after every restart, because the process never
lives to commit past it. Before a batch is processed, the runtime writes a mark per
partition: the first offset, the attempts made on it so far, and the last offset of the
batch. A process that finds a mark left behind knows its predecessor ended inside that
range: it takes the range one record at a time (so the culprit is found alone), counting
attempts on the record at the mark, and dead-letters that record as ``crashed`` once it
has ended the process ``limit`` times.

Marks are small JSON files, one per consumer group and partition, written atomically
(temporary file and rename); a mark older than ``max_age_seconds`` (a day) is ignored, so
a topic recreated since cannot inherit counts from its predecessor. A process kill leaves
the page cache intact, so no fsync is needed; a lost host loses at most one count. The
folder is per host or volume: replicas on other hosts keep their own counts, so a record
that kills every replica it reaches is set aside after at most ``limit`` crashes on each.
(Kafka's commit metadata would share the count, but not every broker keeps it: Tansu
returns none.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Mark:
    """``attempts`` made on ``offset``, inside a range that ended a process and ends at ``last``."""

    offset: int
    attempts: int
    last: int

    def attempts_on(self, offset: int) -> int:
        """Attempts already made on ``offset`` alone (the range's later records start at 0)."""
        return self.attempts if offset == self.offset else 0

    def covers(self, offset: int) -> bool:
        return self.offset <= offset <= self.last


class AttemptJournal:
    """Marks of one consumer group, one file per topic partition under ``root``."""

    def __init__(self, root: str | Path, group_id: str, max_age_seconds: float = 86_400.0) -> None:
        self.folder = Path(root) / _UNSAFE.sub("_", group_id)
        self.max_age_seconds = max_age_seconds

    def _path(self, topic: str, partition: int) -> Path:
        return self.folder / f"{_UNSAFE.sub('_', topic)}-{partition}.json"

    def read(self, topic: str, partition: int) -> Mark | None:
        """The mark left for this partition, or None (none, or unreadable: logged, then ignored)."""
        path = self._path(topic, partition)
        try:
            if time.time() - path.stat().st_mtime > self.max_age_seconds:
                return None
            data = json.loads(path.read_text())
            return Mark(int(data["offset"]), int(data["attempts"]), int(data["last"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("attempt mark %s is unreadable (%s); ignored", path, exc)
            return None

    def write(self, topic: str, partition: int, mark: Mark) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(topic, partition)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fields = {"offset": mark.offset, "attempts": mark.attempts, "last": mark.last}
        temporary.write_text(json.dumps(fields))
        os.replace(temporary, path)

    def clear(self, topic: str, partition: int) -> None:
        self._path(topic, partition).unlink(missing_ok=True)
