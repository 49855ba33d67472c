"""Blob store for images too large to travel inline.

The default is a local directory; keys are content hashes (sha256 hex) so a put
is idempotent and replicas never overwrite each other's data. URIs look like
``blob://<sha256>.<ext>``; ``file://`` URIs are accepted only inside the root
(after resolving ``..`` and symlinks); ``http(s)`` URIs are refused unless the
operator allows them (they are never fetched by default).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from shared.errors import BlobAccessError, DependencyUnavailable

_KEY_RE = re.compile(r"^[0-9a-f]{64}\.(png|npy|bin)$")


class BlobStore(Protocol):
    def put(self, data: bytes, sha256: str, ext: str) -> str: ...
    def get(self, uri: str) -> bytes: ...


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
        if not path.exists():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except OSError as exc:
                raise DependencyUnavailable(f"blob store write failed: {exc}") from exc
        return f"blob://{key}"

    def resolve(self, uri: str) -> Path:
        """Map a URI to a path inside the root, refusing every escape."""
        parsed = urlparse(uri)
        scheme = parsed.scheme.lower()
        if scheme == "blob":
            return self._path_for_key(parsed.netloc + parsed.path)
        if scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise BlobAccessError(f"file URI with a remote host: {uri!r}", reason="blob_escape")
            raw = Path(unquote(parsed.path))
            candidate = raw if raw.is_absolute() else self.root / raw
            resolved = candidate.resolve()
            if not resolved.is_relative_to(self.root):
                raise BlobAccessError(f"URI escapes the blob store root: {uri!r}", reason="blob_escape")
            return resolved
        if scheme in ("http", "https"):
            raise BlobAccessError(f"remote URIs are not fetched: {uri!r}", reason="blob_remote")
        raise BlobAccessError(f"unknown URI scheme {scheme or '(none)'!r} in {uri!r}", reason="blob_scheme")

    def get(self, uri: str) -> bytes:
        path = self.resolve(uri)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise BlobAccessError(f"blob not found: {uri!r}", reason="blob_missing") from exc
        except OSError as exc:
            raise DependencyUnavailable(f"blob store read failed: {exc}") from exc
        if size > self.max_bytes:
            raise BlobAccessError(
                f"blob {uri!r} is {size} bytes, over {self.max_bytes}", reason="blob_too_large"
            )
        return path.read_bytes()
