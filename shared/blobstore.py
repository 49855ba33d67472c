"""Blob store for images too large to travel inline.

The default is a local directory; keys are content hashes (sha256 hex) so a put
is idempotent and replicas never overwrite each other's data. URIs look like
``blob://<sha256>.<ext>``; ``file://`` URIs are accepted only inside the root
(after resolving ``..`` and symlinks); ``http(s)`` URIs are refused unless the
operator allows them (they are never fetched by default).

Failures are split the way the runtime routes them (:mod:`shared.errors`):

- the URI or what it names is wrong, the same every time -> :class:`BlobAccessError`
  (dead-lettered) with a precise reason: ``blob_uri_invalid`` (control characters such
  as ``%00``, unparsable, too long, a symlink loop), ``blob_key``, ``blob_escape``,
  ``blob_remote``, ``blob_scheme``, ``blob_not_a_file`` (a directory, FIFO, socket or
  device: never opened for reading, so a FIFO cannot block the stage),
  ``blob_too_large``, and ``blob_missing`` for a file that is not there (yet);
- the file system fails (EIO, EACCES, ENOSPC...) -> :class:`StorageUnavailable`
  (transient: retried, then the stage pauses).

A put writes a temporary file, fsyncs it, renames it into place and fsyncs the
directory (best effort), so a crash never leaves a truncated blob under its key.
A put of content already stored refreshes the file's mtime, which is what
:meth:`LocalBlobStore.collect` ages blobs by.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from shared.errors import BlobAccessError, StorageUnavailable

_KEY_RE = re.compile(r"^[0-9a-f]{64}\.(png|npy|bin)$")
_FANOUT_RE = re.compile(r"^[0-9a-f]{2}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
TMP_PREFIX = ".tmp-"
MAX_URI_CHARS = 2048
TEMP_GRACE_SECONDS = 3600.0  # a temporary file this old belongs to a put that died
_READ_CHUNK_BYTES = 1 << 20
_INPUT_ERRNOS = {errno.ENAMETOOLONG: "blob_uri_invalid", errno.ELOOP: "blob_uri_invalid",
                 errno.ENOTDIR: "blob_missing", errno.ENXIO: "blob_not_a_file"}


class BlobStore(Protocol):
    def put(self, data: bytes, sha256: str, ext: str) -> str: ...
    def get(self, uri: str) -> bytes: ...


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def _fs_error(exc: OSError, uri: str, what: str) -> BlobAccessError | StorageUnavailable:
    """An OSError about one blob: bad input when the path itself is wrong, else the file system's fault."""
    if isinstance(exc, FileNotFoundError):
        return BlobAccessError(f"blob not found: {uri!r}", reason="blob_missing")
    reason = _INPUT_ERRNOS.get(exc.errno or 0)
    if reason is not None:
        return BlobAccessError(f"blob {uri!r}: {exc.strerror or exc}", reason=reason)
    return StorageUnavailable(f"blob store {what} failed for {uri!r}: {exc}")


def _fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable; best effort (not every file system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class CollectedBlob:
    """One file removed (or, in a dry run, to be removed) by :meth:`LocalBlobStore.collect`."""

    path: Path
    size_bytes: int
    mtime: float
    why: str  # "age" | "size" | "temp"


@dataclass
class BlobCollection:
    """What a collection removed and what it left."""

    removed: list[CollectedBlob] = field(default_factory=list)
    kept_count: int = 0
    kept_bytes: int = 0
    failed: list[str] = field(default_factory=list)  # files that could not be removed, with why
    dry_run: bool = False

    @property
    def removed_bytes(self) -> int:
        return sum(b.size_bytes for b in self.removed)


class LocalBlobStore:
    """Content-addressed files under ``root/<aa>/<sha256>.<ext>``."""

    def __init__(self, root: str | Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes

    def _path_for_key(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise BlobAccessError(f"invalid blob key {key!r}", reason="blob_key")
        return self.root / key[:2] / key

    def put(self, data: bytes, sha256: str, ext: str) -> str:
        key = f"{sha256}.{ext}"
        path = self._path_for_key(key)
        uri = f"blob://{key}"
        try:
            if path.is_file():
                with contextlib.suppress(OSError):  # a read-only mount: the content is there all the same
                    os.utime(path)
                return uri
            created_dir = not path.parent.is_dir()
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise StorageUnavailable(f"blob store write of {key} failed: {exc}") from exc
        _fsync_directory(path.parent)
        if created_dir:
            _fsync_directory(self.root)
        return uri

    def resolve(self, uri: str) -> Path:
        """Map a URI to a path inside the root, refusing every escape and every malformed URI."""
        if not isinstance(uri, str) or len(uri) > MAX_URI_CHARS:
            raise BlobAccessError(f"blob URI is not a string of at most {MAX_URI_CHARS} characters",
                                  reason="blob_uri_invalid")
        if _CONTROL_RE.search(uri):
            raise BlobAccessError(f"blob URI has control characters: {uri!r}", reason="blob_uri_invalid")
        try:
            parsed = urlparse(uri)
        except ValueError as exc:
            raise BlobAccessError(f"unparsable blob URI {uri!r}: {exc}", reason="blob_uri_invalid") from exc
        scheme = parsed.scheme.lower()
        if scheme == "blob":
            return self._path_for_key(parsed.netloc + parsed.path)
        if scheme == "file":
            text = unquote(parsed.path)
            if _CONTROL_RE.search(text) or _CONTROL_RE.search(unquote(parsed.netloc)):
                raise BlobAccessError(f"file URI has encoded control characters (e.g. %00): {uri!r}",
                                      reason="blob_uri_invalid")
            if parsed.netloc not in ("", "localhost"):
                raise BlobAccessError(f"file URI with a remote host: {uri!r}", reason="blob_escape")
            raw = Path(text)
            candidate = raw if raw.is_absolute() else self.root / raw
            try:
                resolved = candidate.resolve()
            except RuntimeError as exc:  # a symlink loop (Python < 3.13)
                raise BlobAccessError(f"blob URI {uri!r}: {exc}", reason="blob_uri_invalid") from exc
            except ValueError as exc:
                raise BlobAccessError(f"blob URI {uri!r}: {exc}", reason="blob_uri_invalid") from exc
            except OSError as exc:
                raise _fs_error(exc, uri, "path resolution") from exc
            if not resolved.is_relative_to(self.root):
                raise BlobAccessError(f"URI escapes the blob store root: {uri!r}", reason="blob_escape")
            return resolved
        if scheme in ("http", "https"):
            raise BlobAccessError(f"remote URIs are not fetched: {uri!r}", reason="blob_remote")
        raise BlobAccessError(f"unknown URI scheme {scheme or '(none)'!r} in {uri!r}", reason="blob_scheme")

    def get(self, uri: str) -> bytes:
        """The blob's bytes. Only a regular file is opened, never a FIFO or device (no blocking open)."""
        path = self.resolve(uri)
        try:
            before = os.lstat(path)
        except OSError as exc:
            raise _fs_error(exc, uri, "read") from exc
        self._check_regular(before.st_mode, before.st_size, uri)
        # O_NONBLOCK and O_NOFOLLOW close the window between the check and the open: a FIFO or a
        # symlink swapped in meanwhile is opened without blocking (or not at all) and refused below
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BlobAccessError(f"blob {uri!r} became a symbolic link",
                                      reason="blob_not_a_file") from exc
            raise _fs_error(exc, uri, "read") from exc
        try:
            opened = os.fstat(fd)
            self._check_regular(opened.st_mode, opened.st_size, uri)
            chunks: list[bytes] = []
            total = 0
            while chunk := os.read(fd, _READ_CHUNK_BYTES):
                chunks.append(chunk)
                total += len(chunk)
                if total > self.max_bytes:  # grew after the size check
                    self._check_regular(opened.st_mode, total, uri)
            return b"".join(chunks)
        except OSError as exc:
            raise _fs_error(exc, uri, "read") from exc
        finally:
            os.close(fd)

    def _check_regular(self, mode: int, size: int, uri: str) -> None:
        if not stat.S_ISREG(mode):
            raise BlobAccessError(f"blob {uri!r} is {_file_kind(mode)}, not a file", reason="blob_not_a_file")
        if size > self.max_bytes:
            raise BlobAccessError(f"blob {uri!r} is {size} bytes, over {self.max_bytes}",
                                  reason="blob_too_large")

    # ---- collection ------------------------------------------------------------------------------
    def _stored_files(self) -> tuple[list[tuple[float, int, Path]], list[tuple[float, int, Path]]]:
        """(content-addressed blobs, leftover temporary files) as (mtime, bytes, path).

        Only files this store writes are considered: ``<aa>/<sha256>.<ext>`` under the root
        and its temporary files; anything else under the root (files a ``file://`` URI may
        name) is not the store's to remove.
        """
        blobs: list[tuple[float, int, Path]] = []
        temps: list[tuple[float, int, Path]] = []
        try:
            fanout = [entry for entry in os.scandir(self.root)
                      if _FANOUT_RE.match(entry.name) and entry.is_dir(follow_symlinks=False)]
            for directory in fanout:
                for entry in os.scandir(directory.path):
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISREG(info.st_mode):
                        continue
                    row = (info.st_mtime, info.st_size, Path(entry.path))
                    if _KEY_RE.match(entry.name) and entry.name.startswith(directory.name):
                        blobs.append(row)
                    elif entry.name.startswith(TMP_PREFIX):
                        temps.append(row)
        except OSError as exc:
            raise StorageUnavailable(f"cannot list the blob store at {self.root}: {exc}") from exc
        return blobs, temps

    def collect(self, max_age_seconds: float | None = None, max_total_bytes: int | None = None, *,
                dry_run: bool = False, now: float | None = None,
                keep: Collection[str] = ()) -> BlobCollection:
        """Remove blobs, oldest first by mtime: every one older than ``max_age_seconds``, then as
        many more as needed for the rest to fit in ``max_total_bytes`` (either limit may be None).
        Blobs named in ``keep`` (keys ``<sha256>.<ext>``, e.g. the library's images) always stay.

        Temporary files of puts that died (older than an hour) go too. A blob put again
        (its mtime refreshed) between listing and removal is kept. DLQ values stored here
        are removed like any blob: choose an age of at least the DLQ topic's retention.
        """
        from shared import metrics

        if max_age_seconds is not None and max_age_seconds < 0:
            raise ValueError("max_age_seconds must not be negative")
        if max_total_bytes is not None and max_total_bytes < 0:
            raise ValueError("max_total_bytes must not be negative")
        now = time.time() if now is None else now
        blobs, temps = self._stored_files()
        blobs.sort(key=lambda row: (row[0], str(row[2])))
        total = sum(size for _, size, _ in blobs)
        out = BlobCollection(dry_run=dry_run)
        chosen: list[CollectedBlob] = [CollectedBlob(p, size, mtime, "temp") for mtime, size, p in temps
                                       if now - mtime > TEMP_GRACE_SECONDS]
        for mtime, size, path in blobs:
            if path.name in keep:
                out.kept_count += 1
                continue
            if max_age_seconds is not None and now - mtime > max_age_seconds:
                why = "age"
            elif max_total_bytes is not None and total > max_total_bytes:
                why = "size"
            else:
                out.kept_count += 1
                continue
            chosen.append(CollectedBlob(path, size, mtime, why))
            total -= size
        out.kept_bytes = total
        for blob in chosen:
            if dry_run:
                out.removed.append(blob)
                continue
            try:
                if os.lstat(blob.path).st_mtime != blob.mtime:  # put again meanwhile: in use
                    out.kept_count += 1
                    out.kept_bytes += blob.size_bytes
                    continue
                os.unlink(blob.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                out.failed.append(f"{blob.path}: {exc}")
                continue
            out.removed.append(blob)
        removed_blobs = sum(1 for b in out.removed if b.why != "temp")
        if removed_blobs and not dry_run:
            metrics.BLOBS_REMOVED.inc(removed_blobs)
        return out
