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
since every replica refuses them the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.contracts import ImageRef, Labels, LibraryEntry, Neighbour
from shared.errors import ConfigError, ContractError
from shared.index.settings import IndexSettings
from shared.index.snapshot import load_snapshot, save_snapshot
from shared.index.vector_index import VectorIndex

ENTRIES_FILE = "entries.jsonl"

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


class LibraryState:
    """Applies library records in order and answers nearest-neighbour queries."""

    def __init__(self, model_version: str, dim: int, settings: IndexSettings | None = None) -> None:
        if not model_version:
            raise ConfigError("a library needs the model version of its vectors")
        self._model_version = model_version
        self._index = VectorIndex(dim, settings)
        self._items: dict[str, LibraryItem] = {}
        self._next_offsets: dict[int, int] = {}

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
        return {i.entry_id: i.alert_id for i in self._items.values() if i.status == "provisional"}

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
        vector = entry.vector.to_array().reshape(1, -1)
        item = LibraryItem(
            entry_id=entry.entry_id,
            status=entry.status,
            labels=entry.labels,
            mask=entry.mask,
            simulated=entry.simulated,
            alert_id=entry.alert_id,
            vector_digest=hashlib.blake2b(vector.tobytes(), digest_size=16).hexdigest(),
        )
        previous = self._items.get(entry.entry_id)
        if previous is not None and previous.vector_digest == item.vector_digest:
            self._items[entry.entry_id] = item
            return "updated"
        self._index.add([entry.entry_id], vector)
        self._items[entry.entry_id] = item
        return "upserted"

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

    def snapshot(self, root: Path, *, keep: int = 2) -> Path:
        """Write index, entries and offsets as the current snapshot under ``root``."""

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
    ) -> LibraryState:
        """The library as of the current snapshot under ``root``; replay from :attr:`next_offsets`.

        Raises ConfigError for a missing or damaged snapshot, or one of another
        model version or dimension (then rebuild by replaying the whole topic).
        """
        loaded = load_snapshot(
            root, expected_model_version=model_version, expected_dim=dim, settings=settings
        )
        items: dict[str, LibraryItem] = {}
        try:
            with (loaded.path / ENTRIES_FILE).open(encoding="utf-8") as lines:
                for line in lines:
                    item = LibraryItem.model_validate_json(line)
                    items[item.entry_id] = item
        except (OSError, ValidationError) as exc:
            raise ConfigError(f"library entries of snapshot {loaded.path} are unreadable: {exc}") from exc
        if len(items) != len(loaded.index) or any(entry_id not in loaded.index for entry_id in items):
            raise ConfigError(f"snapshot {loaded.path}: entries and index ids differ")
        state = cls(model_version, loaded.meta.dim, loaded.index.settings)
        state._index = loaded.index
        state._items = items
        state._next_offsets = dict(loaded.meta.next_offsets)
        return state

