"""The library ``score`` compares against: a snapshot folder, or a data set folder embedded on the spot.

- A snapshot (``lithowatch library build --snapshot`` or ``library snapshot``, or a novelty
  replica's ``LITHOWATCH_SNAPSHOT_DIR``): the folder with ``CURRENT``, or one snapshot folder. It
  is restored as the novelty service restores it (:meth:`shared.index.LibraryState.restore`) and
  must hold vectors of the scoring model. Neighbour images come from the entries' references
  (blob URIs resolve under ``LITHOWATCH_BLOB_ROOT``).
- A data set folder (``manifest.jsonl``): embedded with the scoring model and filed as
  reference entries exactly as ``lithowatch library build`` files them (id, labels, vector, the
  dedupe stage's exact digest), without publishing anything; its files supply the neighbour
  images of the panels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from shared.contracts import Hashes, LibraryEntry, Neighbour, Vector
from shared.dataset import MANIFEST_NAME, DatasetItem, read_dataset
from shared.errors import ConfigError
from shared.hashing import exact_digest
from shared.imageref import make_image_ref
from shared.index import PROVISIONAL_ID_PREFIX, IndexSettings, LibraryState, find_snapshot
from shared.index.snapshot import read_meta
from shared.model import Encoder, embed_dataset

LibraryKind = Literal["snapshot", "dataset"]


@dataclass
class OfflineLibrary:
    """The library state the novelty core reads, with where it came from."""

    state: LibraryState
    path: Path
    kind: LibraryKind
    items: dict[str, DatasetItem] = field(default_factory=dict)
    """Entry id -> data set item (a library built from a data set: images for the panels)."""

    @property
    def reference_count(self) -> int:
        return len(self.state) - self.state.provisional_count

    def describe(self) -> dict[str, Any]:
        """Where the library came from and what it holds (provisional entries: novel results of the
        snapshot, or of this run, filed as the novelty service files them)."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "model_version": self.state.model_version,
            "reference_entries": self.reference_count,
            "provisional_entries": self.state.provisional_count,
        }

    def with_image(self, neighbour: Neighbour) -> Neighbour:
        """The neighbour with its print attached when the library's data set holds it."""
        item = self.items.get(neighbour.id)
        if neighbour.simulated is not None or item is None:
            return neighbour
        try:
            simulated = make_image_ref(item.load_simulated(), "png")
        except ConfigError:
            return neighbour  # an empty tile, not a lost panel
        return neighbour.model_copy(update={"simulated": simulated})


def _from_snapshot(path: Path, encoder: Encoder, settings: IndexSettings | None) -> OfflineLibrary:
    folder = find_snapshot(path)
    assert folder is not None
    meta = read_meta(folder)
    if meta.model_version != encoder.model_version:
        raise ConfigError(
            f"library snapshot {folder} holds vectors of model {meta.model_version!r}, but scoring "
            f"runs model {encoder.model_version!r}: give that model (--model) or a library of this one"
        )
    state = LibraryState.restore(path, model_version=encoder.model_version, dim=encoder.dim,
                                 settings=settings)
    if len(state) == 0:
        raise ConfigError(f"library snapshot {folder} holds no entries")
    return OfflineLibrary(state, path, "snapshot")


def _from_dataset(path: Path, encoder: Encoder, settings: IndexSettings | None, batch_size: int,
                  progress: bool) -> OfflineLibrary:
    dataset = read_dataset(path)
    reserved = [item.id for item in dataset.items if item.id.startswith(PROVISIONAL_ID_PREFIX)]
    if reserved:
        raise ConfigError(f"library data set ids may not start with {PROVISIONAL_ID_PREFIX!r}: "
                          + ", ".join(reserved[:5]))
    vectors = embed_dataset(dataset, encoder, batch_size=batch_size, progress=progress)
    state = LibraryState(encoder.model_version, encoder.dim, settings)
    items = dataset.items
    for offset, (item, vector) in enumerate(
            zip(tqdm(items, desc="library", unit="entry", disable=not progress), vectors, strict=True)):
        entry = LibraryEntry(
            entry_id=item.id,
            status="reference",
            vector=Vector.from_array(vector),
            model_version=encoder.model_version,
            labels=dict(item.labels),
            # the dedupe stage's digest: a result replaying this item is recognised as this entry
            hashes=Hashes(exact=exact_digest(item.load_mask(), item.load_simulated())),
        )
        state.apply(entry, 0, offset)
    return OfflineLibrary(state, path, "dataset", {item.id: item for item in items})


def open_library(path: Path, encoder: Encoder, settings: IndexSettings | None = None, *,
                 batch_size: int = 32, progress: bool = True) -> OfflineLibrary:
    """The library under ``path`` (a snapshot, or a data set to embed) for ``encoder``'s vectors."""
    if not path.exists():
        raise ConfigError(f"library {path}: no such file or folder")
    if not path.is_dir():
        raise ConfigError(f"library {path}: expected a snapshot folder or a data set folder")
    if find_snapshot(path) is not None:
        return _from_snapshot(path, encoder, settings)
    if (path / MANIFEST_NAME).is_file():
        return _from_dataset(path, encoder, settings, batch_size, progress)
    raise ConfigError(
        f"library {path}: neither a library snapshot (CURRENT or meta.json) nor a data set ({MANIFEST_NAME})"
    )
