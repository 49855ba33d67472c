"""The reference library as the novelty service sees it: entries + a vector index + offsets.

The library topic is keyed by ``entry_id`` and meant to be compacted, but the
embedded broker does not compact, so :class:`LibraryState` applies every record
in offset order and the last record per key is the truth: an upsert replaces,
a ``delete`` is a tombstone (applied whatever its ``model_version``). A replica
is a snapshot (``snapshot``/``restore``) plus a replay of the topic from the
snapshot's ``next_offsets``; records at offsets already applied are ignored,
so replaying from an earlier offset is harmless, and replicas that applied the
same records answer queries identically.

One owner applies and queries (the class is not thread-safe).

Records this library cannot hold (another model version, another dimension, a
vector that breaks its contract) raise :class:`~shared.errors.ContractError`
and leave the entries as they were; their offset still counts as consumed,
since every replica refuses them the same way. So does a *provisional* upsert
of an id held as a reference entry (``reference_demotion``): novel results never
replace the reference set. The novelty stage files its provisional entries
under :func:`provisional_entry_id` (``provisional/<result_id>``; ``/`` is not
allowed in a result id), so they cannot share a key with a reference entry.

Provisional entries are bounded (``max_provisional``): when an upsert takes
them past the bound, the oldest (by ``created_at``, then id) are evicted from
the entries and the index down to 90% of it, in one removal (an exact index
rewrites its storage on removal, so evicting one at a time would cost a pass
per result). Evicted entries stay on the topic: ``library promote`` or a
later record for the id brings one back; :attr:`LibraryState.evicted_total`
counts them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.contracts import ImageRef, Labels, LibraryEntry, Neighbour, read_tolerant
from shared.errors import ConfigError, ContractError
from shared.index.settings import IndexSettings
from shared.index.snapshot import TopicState, load_snapshot, save_snapshot
from shared.index.vector_index import VectorIndex

ENTRIES_FILE = "entries.jsonl"
PROVISIONAL_ID_PREFIX = "provisional/"
EVICT_TO_FRACTION = 0.9
_OLDEST = datetime.min.replace(tzinfo=UTC)


def provisional_entry_id(result_id: str) -> str:
    """The library entry id of the provisional entry a novel result adds."""
    return f"{PROVISIONAL_ID_PREFIX}{result_id}"


def vector_digest(vector: NDArray[np.float32]) -> str:
    """blake2b-128 of a float32 vector's bytes, as the library stores it per entry."""
    data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()

ApplyOutcome = Literal["upserted", "updated", "deleted", "ignored"]
"""``upserted``: vector added or replaced; ``updated``: same vector, metadata changed;
``deleted``: tombstone removed an entry; ``ignored``: offset already applied, or a
tombstone for an entry not held."""


class LibraryItem(BaseModel):
    """What the library keeps per entry besides its vector (which lives in the index)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entry_id: str
    status: Literal["reference", "provisional"]
    labels: Labels
    mask: ImageRef | None = None
    simulated: ImageRef | None = None
    alert_id: str | None = None
    vector_digest: str
    """blake2b-128 of the float32 vector: an upsert with the same vector only updates metadata."""
    exact_hash: str | None = None
    """The dedupe stage's exact pixel digest of the result, when the record carried one."""
    created_at: datetime | None = None
    """When the record was made (orders provisional entries for eviction; None: oldest)."""


class LibraryState:
    """Applies library records in order and answers nearest-neighbour queries."""

    def __init__(
        self,
        model_version: str,
        dim: int,
        settings: IndexSettings | None = None,
        *,
        max_provisional: int | None = None,
    ) -> None:
        if not model_version:
            raise ConfigError("a library needs the model version of its vectors")
        if max_provisional is not None and max_provisional < 1:
            raise ConfigError(f"max_provisional must be at least 1, got {max_provisional}")
        self._model_version = model_version
        self._index = VectorIndex(dim, settings)
        self._items: dict[str, LibraryItem] = {}
        self._provisional: set[str] = set()
        self._next_offsets: dict[int, int] = {}
        self.max_provisional = max_provisional
        self.evicted_total = 0
        """Provisional entries evicted over the bound since this object was made."""

    @property
    def model_version(self) -> str:
        return self._model_version

    @property
    def dim(self) -> int:
        return self._index.dim

    @property
    def index(self) -> VectorIndex:
        return self._index

    @property
    def next_offsets(self) -> dict[int, int]:
        """Per library-topic partition, the next offset to read (last applied + 1)."""
        return dict(self._next_offsets)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._items

    def get(self, entry_id: str) -> LibraryItem | None:
        return self._items.get(entry_id)

    def provisional(self) -> dict[str, str | None]:
        """Provisional entries (novel results added pending review): entry id -> alert id."""
        return {entry_id: self._items[entry_id].alert_id for entry_id in self._provisional}

    @property
    def provisional_count(self) -> int:
        return len(self._provisional)

    # -- applying records ---------------------------------------------------------------------

    def apply(self, entry: LibraryEntry, partition: int, offset: int) -> ApplyOutcome:
        """Apply the record read at (``partition``, ``offset``) of the library topic."""
        if offset < self._next_offsets.get(partition, 0):
            return "ignored"
        try:
            return self._apply(entry)
        finally:
            self._next_offsets[partition] = offset + 1

    def _apply(self, entry: LibraryEntry) -> ApplyOutcome:
        if entry.op == "delete":
            if self._items.pop(entry.entry_id, None) is None:
                return "ignored"
            self._provisional.discard(entry.entry_id)
            self._index.remove([entry.entry_id])
            return "deleted"
        if entry.model_version != self._model_version:
            raise ContractError(
                f"library entry {entry.entry_id!r} holds a vector of model {entry.model_version!r}; "
                f"this library holds model {self._model_version!r}",
                reason="model_version",
            )
        if entry.vector is None:  # the contract requires one for upserts
            raise ContractError(f"library upsert {entry.entry_id!r} has no vector", reason="vector_dim")
        if entry.vector.dim != self.dim:
            raise ContractError(
                f"library entry {entry.entry_id!r} has a {entry.vector.dim}-d vector; "
                f"this library holds {self.dim}-d vectors",
                reason="vector_dim",
            )
        previous = self._items.get(entry.entry_id)
        if entry.status == "provisional" and previous is not None and previous.status == "reference":
            raise ContractError(
                f"provisional upsert of {entry.entry_id!r} refused: that id is a reference entry "
                "(novel results never replace the reference set)",
                reason="reference_demotion",
            )
        vector = entry.vector.to_array().reshape(1, -1)
        item = LibraryItem(
            entry_id=entry.entry_id,
            status=entry.status,
            labels=entry.labels,
            mask=entry.mask,
            simulated=entry.simulated,
            alert_id=entry.alert_id,
            vector_digest=vector_digest(vector),
            exact_hash=entry.hashes.exact if entry.hashes is not None else None,
            created_at=entry.created_at,
        )
        if previous is not None and previous.vector_digest == item.vector_digest:
            outcome: ApplyOutcome = "updated"
        else:
            self._index.add([entry.entry_id], vector)
            outcome = "upserted"
        self._items[entry.entry_id] = item
        if item.status == "provisional":
            self._provisional.add(entry.entry_id)
            self._evict_over_bound()
        else:
            self._provisional.discard(entry.entry_id)
        return outcome

    def _evict_over_bound(self) -> None:
        bound = self.max_provisional
        if bound is None or len(self._provisional) <= bound:
            return
        keep = max(1, int(bound * EVICT_TO_FRACTION))
        oldest_first = sorted(self._provisional, key=self._age_key)
        evicted = oldest_first[: len(oldest_first) - keep]
        for entry_id in evicted:
            del self._items[entry_id]
            self._provisional.discard(entry_id)
        self._index.remove(evicted)
        self.evicted_total += len(evicted)

    def _age_key(self, entry_id: str) -> tuple[datetime, str]:
        created = self._items[entry_id].created_at
        if created is None:
            created = _OLDEST
        elif created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        return created, entry_id

    # -- queries ------------------------------------------------------------------------------

    def neighbours(
        self, vector: NDArray[np.float32], k: int, *, exclude: Collection[str] = ()
    ) -> list[Neighbour]:
        """The ``k`` entries most similar to a float32 (dim,) unit vector, best first, minus ``exclude``."""
        if not isinstance(vector, np.ndarray) or vector.ndim != 1:
            raise ContractError("neighbours() takes one 1-D vector", reason="vector_dim")
        return self.neighbours_batch(vector, k, exclude=exclude)[0]

    def neighbours_batch(
        self, vectors: NDArray[np.float32], k: int, *, exclude: Collection[str] = ()
    ) -> list[list[Neighbour]]:
        """:meth:`neighbours` for each row of a float32 (n, dim) batch (a (dim,) vector is one row)."""
        skipped = {entry_id for entry_id in exclude if entry_id in self._items}
        result = self._index.search(vectors, k + len(skipped))
        batch = []
        for row in range(len(result)):
            found = [(i, s) for i, s in result.hits(row) if i not in skipped][:k]
            batch.append([self._neighbour(entry_id, similarity) for entry_id, similarity in found])
        return batch

    def _neighbour(self, entry_id: str, similarity: float) -> Neighbour:
        item = self._items[entry_id]
        return Neighbour(
            id=entry_id,
            similarity=similarity,
            labels=item.labels,
            mask=item.mask,
            simulated=item.simulated,
            provisional=item.status == "provisional",
            alert_id=item.alert_id,
        )

    # -- snapshots ----------------------------------------------------------------------------

    def snapshot(self, root: Path, *, keep: int = 2, topic_id: str | None = None) -> Path:
        """Write index, entries and offsets as the current snapshot under ``root``.

        ``topic_id``: the library topic's id, so a restore can tell another incarnation of it.
        """

        def write_entries(folder: Path) -> None:
            with (folder / ENTRIES_FILE).open("w", encoding="utf-8") as out:
                for item in self._items.values():
                    out.write(item.model_dump_json())
                    out.write("\n")

        return save_snapshot(
            root,
            self._index,
            model_version=self._model_version,
            next_offsets=self._next_offsets,
            topic_id=topic_id,
            write_extra=write_entries,
            keep=keep,
        )

    @classmethod
    def restore(
        cls,
        root: Path,
        *,
        model_version: str,
        dim: int | None = None,
        settings: IndexSettings | None = None,
        topic: TopicState | None = None,
        max_provisional: int | None = None,
    ) -> LibraryState:
        """The library as of the current snapshot under ``root``; replay from :attr:`next_offsets`.

        Raises ConfigError for a missing or damaged snapshot, one of another
        model version or dimension, or, given the library ``topic`` as it is now,
        one taken from another incarnation of it (then rebuild by replaying the
        whole topic). Provisional entries over ``max_provisional`` are evicted.
        """
        items: dict[str, LibraryItem] = {}

        def read_entries(folder: Path) -> None:
            try:
                with (folder / ENTRIES_FILE).open(encoding="utf-8") as lines:
                    for line in lines:
                        item = read_tolerant(LibraryItem, line)  # fields of a newer release ignored
                        items[item.entry_id] = item
            except (OSError, ValidationError) as exc:
                raise ConfigError(f"library entries of snapshot {folder} are unreadable: {exc}") from exc

        loaded = load_snapshot(
            root,
            expected_model_version=model_version,
            expected_dim=dim,
            settings=settings,
            topic=topic,
            read_extra=read_entries,
        )
        if len(items) != len(loaded.index) or any(entry_id not in loaded.index for entry_id in items):
            raise ConfigError(f"snapshot {loaded.path}: entries and index ids differ")
        state = cls(model_version, loaded.meta.dim, loaded.index.settings, max_provisional=max_provisional)
        state._index = loaded.index
        state._items = items
        state._provisional = {i.entry_id for i in items.values() if i.status == "provisional"}
        state._next_offsets = dict(loaded.meta.next_offsets)
        state._evict_over_bound()
        return state

