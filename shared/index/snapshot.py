"""Snapshots of a :class:`VectorIndex`: FAISS file + id mapping + metadata, written atomically.

Layout under a snapshot root::

    CURRENT                 name of the latest complete snapshot (replaced atomically)
    snapshot-000042/
        index.faiss         faiss.write_index
        ids.json            labels, ids, label counter, masked labels
        meta.json           SnapshotMeta (written last)
        ...                 extra files a caller adds (the library's entries.jsonl)

A snapshot is written into a hidden temporary folder, flushed to disk, renamed
to its final name, and only then named in ``CURRENT``; a reader therefore sees
the previous snapshot or the new one, never a partial one. The ``keep`` newest
snapshots are kept, older ones deleted. No pickle: FAISS's own format and JSON.

Several writers may share one root (novelty replicas on one volume): the slow
part (writing the temporary folder) runs unlocked, then choosing the sequence
number, the rename, ``CURRENT`` and pruning run under an exclusive
``fcntl.flock`` on ``.lock``; readers hold a shared lock while they load, so a
writer never prunes the snapshot being read. Each writer's snapshot is complete
and valid for every replica (they all read the same topic); ``CURRENT`` names
the last one written. Temporary folders left by a crashed writer are removed
after an hour.

``next_offsets`` records, per partition of the library topic, the next offset a
consumer must read to continue from the snapshot (Kafka's committed-offset
convention: last applied + 1). ``topic_id`` records which incarnation of the
topic that was (Kafka's topic id, when the broker reports one): offsets of a
deleted and recreated topic mean nothing, see :func:`stale_reason`.

``meta.json`` follows the contracts' compatibility rule (``docs/contracts.md``): written
strictly, read tolerantly (:func:`~shared.contract_types.read_tolerant`), so a snapshot a newer
lithowatch wrote with an added field still loads; a newer ``format_version`` is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import faiss
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.contract_types import read_tolerant
from shared.contracts import Topics
from shared.errors import ConfigError
from shared.index.settings import IndexKind, IndexSettings
from shared.index.vector_index import IndexState, VectorIndex

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
META_FILE = "meta.json"
CURRENT_FILE = "CURRENT"
LOCK_FILE = ".lock"
STALE_TMP_SECONDS = 3600.0
_SNAPSHOT_NAME = re.compile(r"^snapshot-(\d{6,})$")


class SnapshotMeta(BaseModel):
    """What a snapshot holds, checked before its index is loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = 1
    model_version: str
    dim: int = Field(gt=0)
    kind: IndexKind
    size: int = Field(ge=0)
    topic: str = Topics.LIBRARY
    topic_id: str | None = None
    """The topic's id when the snapshot was taken (None: the broker reported none)."""
    next_offsets: dict[int, int] = Field(default_factory=dict)
    settings: IndexSettings
    created_at: datetime
    file_sizes_bytes: dict[str, int]


@dataclass(frozen=True)
class TopicState:
    """The library topic as it is now: its id (None when the broker reports none) and, per
    partition, the (low, high) watermarks (first offset held, next offset to be written)."""

    topic_id: str | None = None
    watermarks: dict[int, tuple[int, int]] = field(default_factory=dict)


def stale_reason(meta: SnapshotMeta, topic: TopicState) -> str | None:
    """Why a snapshot cannot be continued from ``topic`` as it is now, or None when it can.

    - another topic id than the one recorded: the topic was deleted and recreated since
      (its offsets restart at 0, so stored offsets would skip or misplace records);
    - a stored offset past a partition's high watermark, or a partition that no longer
      exists: recreated or truncated (this catches brokers that report no topic id);
    - a stored offset below a partition's low watermark: the records in between are gone,
      and the tombstones among them with them, so the snapshot cannot be completed.

    A snapshot without a recorded id (or a broker without ids) is judged by offsets alone.
    When both ids are known and equal, a stored offset past the high watermark is not held
    against it: offsets of one topic only grow, and Tansu 0.6 reports the end of a partition
    as the first offset of its last batch plus one (five records written in one batch end at
    1), which would refuse every snapshot taken after a batched write.
    """
    same_topic = meta.topic_id is not None and meta.topic_id == topic.topic_id
    if meta.topic_id is not None and topic.topic_id is not None and meta.topic_id != topic.topic_id:
        return (
            f"it was taken from topic id {meta.topic_id}, the topic now has id {topic.topic_id} "
            "(deleted and recreated since)"
        )
    for partition, next_offset in sorted(meta.next_offsets.items()):
        if partition not in topic.watermarks:
            return f"partition {partition} it continues no longer exists"
        low, high = topic.watermarks[partition]
        if next_offset > high and not same_topic:
            return (
                f"it continues partition {partition} at offset {next_offset}, past the topic's end "
                f"({high}): the topic was recreated or truncated since"
            )
        if next_offset < low:
            return (
                f"it continues partition {partition} at offset {next_offset}, but the topic now "
                f"starts at {low}: the records in between are gone"
            )
    return None


@dataclass(frozen=True)
class LoadedSnapshot:
    index: VectorIndex
    meta: SnapshotMeta
    path: Path


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, separators=(",", ":")), encoding="utf-8")


@contextmanager
def _locked(root: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``root/.lock`` (exclusive for writers, shared for readers) for the block.

    A reader that cannot create the lock file (a read-only volume: no writer either)
    reads unlocked.
    """
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def save_snapshot(
    root: Path,
    index: VectorIndex,
    *,
    model_version: str,
    next_offsets: Mapping[int, int] | None = None,
    topic_id: str | None = None,
    write_extra: Callable[[Path], None] | None = None,
    keep: int = 2,
) -> Path:
    """Write a new snapshot under ``root`` and make it current; returns its folder.

    ``write_extra(folder)`` may add files to the snapshot before it is sealed.
    Safe with other writers on the same root (see the module docstring).
    """
    root = Path(root)
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        faiss.write_index(index.faiss_index, str(tmp / INDEX_FILE))
        state = index.state()
        _write_json(
            tmp / IDS_FILE,
            {
                "labels": state.labels,
                "ids": state.ids,
                "next_label": state.next_label,
                "masked_labels": state.masked_labels,
            },
        )
        if write_extra is not None:
            write_extra(tmp)
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        meta = SnapshotMeta(
            model_version=model_version,
            dim=index.dim,
            kind=index.kind,
            size=index.size,
            topic_id=topic_id,
            next_offsets=dict(next_offsets or {}),
            settings=index.settings,
            created_at=datetime.now(UTC),
            file_sizes_bytes={p.name: p.stat().st_size for p in files},
        )
        (tmp / META_FILE).write_text(meta.model_dump_json(indent=1), encoding="utf-8")
        for path in [*files, tmp / META_FILE, tmp]:
            _fsync_path(path)
        with _locked(root, exclusive=True):
            final = _claim(root, tmp)
            current_tmp = root / f".{CURRENT_FILE}.{uuid.uuid4().hex}"
            current_tmp.write_text(final.name + "\n", encoding="utf-8")
            _fsync_path(current_tmp)
            os.replace(current_tmp, root / CURRENT_FILE)
            _fsync_path(root)
            _prune(root, keep=max(keep, 1))
    except (OSError, RuntimeError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"cannot write index snapshot under {root}: {exc}") from exc
    return final


def _claim(root: Path, tmp: Path) -> Path:
    """Rename ``tmp`` to the next free ``snapshot-NNNNNN`` (under the lock; a taken name,
    should the lock be a no-op on this file system, moves on to the next number)."""
    sequence = _next_sequence(root)
    for _ in range(100):
        final = root / f"snapshot-{sequence:06d}"
        try:
            final.mkdir()  # claims the name atomically; rename then replaces the empty folder
        except FileExistsError:
            sequence += 1
            continue
        tmp.rename(final)
        return final
    raise OSError(f"no free snapshot name under {root} after {sequence}")


def _snapshot_dirs(root: Path) -> list[tuple[int, Path]]:
    found = []
    for path in root.iterdir():
        match = _SNAPSHOT_NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _next_sequence(root: Path) -> int:
    existing = _snapshot_dirs(root)
    return existing[-1][0] + 1 if existing else 1


def _prune(root: Path, keep: int) -> None:
    current = find_snapshot(root)
    for _, path in _snapshot_dirs(root)[:-keep]:
        if path != current:
            shutil.rmtree(path, ignore_errors=True)
    cutoff = time.time() - STALE_TMP_SECONDS
    for path in root.glob(".tmp-*"):
        try:
            if path.stat().st_mtime < cutoff:  # a crashed writer's leftovers
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def find_snapshot(root: Path) -> Path | None:
    """The current snapshot folder under ``root`` (or ``root`` itself if it is one), else None."""
    root = Path(root)
    pointer = root / CURRENT_FILE
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if not _SNAPSHOT_NAME.match(name):
            raise ConfigError(f"{pointer} names {name!r}, which is not a snapshot folder")
        return root / name
    if (root / META_FILE).is_file():
        return root
    return None


def read_meta(path: Path) -> SnapshotMeta:
    """A snapshot's metadata, read as a tolerant reader (fields of a newer release are ignored)."""
    try:
        return read_tolerant(SnapshotMeta, (path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise ConfigError(f"snapshot metadata {path / META_FILE} is unreadable: {exc}") from exc


def load_snapshot(
    root: Path,
    *,
    expected_model_version: str,
    expected_dim: int | None = None,
    settings: IndexSettings | None = None,
    topic: TopicState | None = None,
    read_extra: Callable[[Path], object] | None = None,
) -> LoadedSnapshot:
    """Restore the current snapshot under ``root``.

    Refuses (ConfigError) a missing or damaged snapshot, one built for another
    model version or dimension (its vectors are not comparable with this
    model's), and, given the ``topic`` as it is now, one that cannot be
    continued from it (:func:`stale_reason`). ``settings`` (default: those
    saved) supply the search-time parameters and the growth policy from here on.
    ``read_extra(folder)`` reads a caller's extra files under the same lock.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"no index snapshot under {root}")
    with _locked(root, exclusive=False):
        loaded = _load(root, expected_model_version, expected_dim, settings, topic)
        if read_extra is not None:
            read_extra(loaded.path)
        return loaded


def _load(
    root: Path,
    expected_model_version: str,
    expected_dim: int | None,
    settings: IndexSettings | None,
    topic: TopicState | None,
) -> LoadedSnapshot:
    path = find_snapshot(root)
    if path is None:
        raise ConfigError(f"no index snapshot under {root}")
    meta = read_meta(path)
    if topic is not None and (why := stale_reason(meta, topic)) is not None:
        raise ConfigError(f"snapshot {path} is stale: {why}; rebuild the index from the library topic")
    if meta.model_version != expected_model_version:
        raise ConfigError(
            f"snapshot {path} holds vectors of model {meta.model_version!r}, but this service runs "
            f"{expected_model_version!r}; rebuild the index from the library topic instead"
        )
    if expected_dim is not None and meta.dim != expected_dim:
        raise ConfigError(f"snapshot {path} has dimension {meta.dim}, expected {expected_dim}")
    for name, size_bytes in meta.file_sizes_bytes.items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size_bytes:
            raise ConfigError(f"snapshot file {file} is missing or truncated")
    try:
        faiss_index = faiss.read_index(str(path / INDEX_FILE))
        raw = json.loads((path / IDS_FILE).read_text(encoding="utf-8"))
        state = IndexState(
            labels=[int(v) for v in raw["labels"]],
            ids=[str(v) for v in raw["ids"]],
            next_label=int(raw["next_label"]),
            masked_labels=[int(v) for v in raw["masked_labels"]],
        )
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"snapshot {path} is unreadable: {exc}") from exc
    if int(faiss_index.d) != meta.dim:
        raise ConfigError(f"snapshot {path}: index dimension {faiss_index.d} differs from {meta.dim}")
    index = VectorIndex.from_state(faiss_index, state, settings or meta.settings)
    return LoadedSnapshot(index=index, meta=meta, path=path)
