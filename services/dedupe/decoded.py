"""Stored results' coarse masks for the ranking, kept from batch to batch.

A stored result stays a candidate for many later results (the newest nearest by
profile are ranked for every result no hash candidate matched), and each batch
would otherwise decode its payload again and redo the coarse mask the ranking
compares (:func:`shared.verification.coarse_overlap_sums`: its sums and spectrum,
about 0.3 ms with the decode). :class:`CoarseSums` keeps them, least recently used
first out, within a byte budget: about 26 KB a 256 px clip, so the default 128 MiB
holds some 5,000 results, more than the recent pool the ranking reads. The pixel
check's own sums (about 0.5 MB a clip) are made per batch.

An entry is keyed by the result id *and* the length and a checksum of its payload,
so a payload that differs under the same id is never ranked by another's pixels.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable

from shared.verification import CoarseMask

Key = tuple[str, int, int]
UNDECODABLE_BYTES = 64  # what an entry saying "cannot be decoded" is counted as


def payload_key(result_id: str, payload: bytes) -> Key:
    return result_id, len(payload), zlib.crc32(payload)


def sums_bytes(sums: CoarseMask | None) -> int:
    return UNDECODABLE_BYTES if sums is None else sums.nbytes


class CoarseSums:
    """Coarse sums by payload key (``None``: the payload cannot be decoded), least recently used
    evicted past ``max_bytes`` (0: nothing kept). Not thread-safe: one per core, used by one thread."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, CoarseMask | None] = OrderedDict()
        self._sizes: dict[Key, int] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, make: Callable[[], CoarseMask | None]) -> CoarseMask | None:
        """The sums under ``key``, made by ``make`` when absent and kept."""
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        sums = make()
        self.put(key, sums)
        return sums

    def put(self, key: Key, sums: CoarseMask | None) -> None:
        """Keep ``sums`` under ``key`` (a result about to be stored: made while it was verified)."""
        if key in self._entries or self.max_bytes <= 0:
            return
        self._entries[key] = sums
        self._sizes[key] = sums_bytes(sums)
        self.bytes += self._sizes[key]
        while self.bytes > self.max_bytes and self._entries:
            oldest, _ = self._entries.popitem(last=False)
            self.bytes -= self._sizes.pop(oldest)
