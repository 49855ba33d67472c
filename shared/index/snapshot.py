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

``next_offsets`` records, per partition of the library topic, the next offset a
consumer must read to continue from the snapshot (Kafka's committed-offset
convention: last applied + 1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import faiss
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.contracts import Topics
from shared.errors import ConfigError
from shared.index.settings import IndexKind, IndexSettings
from shared.index.vector_index import IndexState, VectorIndex

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
META_FILE = "meta.json"
CURRENT_FILE = "CURRENT"
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
    next_offsets: dict[int, int] = Field(default_factory=dict)
    settings: IndexSettings
    created_at: datetime
    file_sizes_bytes: dict[str, int]


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


def save_snapshot(
    root: Path,
    index: VectorIndex,
    *,
    model_version: str,
    next_offsets: Mapping[int, int] | None = None,
    write_extra: Callable[[Path], None] | None = None,
    keep: int = 2,
) -> Path:
    """Write a new snapshot under ``root`` and make it current; returns its folder.

    ``write_extra(folder)`` may add files to the snapshot before it is sealed.
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
            next_offsets=dict(next_offsets or {}),
            settings=index.settings,
            created_at=datetime.now(UTC),
            file_sizes_bytes={p.name: p.stat().st_size for p in files},
        )
        (tmp / META_FILE).write_text(meta.model_dump_json(indent=1), encoding="utf-8")
        for path in [*files, tmp / META_FILE, tmp]:
            _fsync_path(path)
        final = root / f"snapshot-{_next_sequence(root):06d}"
        tmp.rename(final)
        current_tmp = root / f".{CURRENT_FILE}.{uuid.uuid4().hex}"
        current_tmp.write_text(final.name + "\n", encoding="utf-8")
        _fsync_path(current_tmp)
        os.replace(current_tmp, root / CURRENT_FILE)
        _fsync_path(root)
    except (OSError, RuntimeError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"cannot write index snapshot under {root}: {exc}") from exc
    _prune(root, keep=max(keep, 1))
    return final


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
    try:
        return SnapshotMeta.model_validate_json((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise ConfigError(f"snapshot metadata {path / META_FILE} is unreadable: {exc}") from exc


def load_snapshot(
    root: Path,
    *,
    expected_model_version: str,
    expected_dim: int | None = None,
    settings: IndexSettings | None = None,
) -> LoadedSnapshot:
    """Restore the current snapshot under ``root``.

    Refuses (ConfigError) a missing or damaged snapshot, and one built for
    another model version or dimension: its vectors are not comparable with
    this model's. ``settings`` (default: those saved) supply the search-time
    parameters and the growth policy from here on.
    """
    path = find_snapshot(Path(root))
    if path is None:
        raise ConfigError(f"no index snapshot under {root}")
    meta = read_meta(path)
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
