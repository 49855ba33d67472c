"""The lithowatch exception tree.

Every error the project raises on purpose derives from :class:`LithowatchError`.
Third-party errors (kafka-python, redis, OpenCV, torch, FAISS) are translated at
one boundary with ``raise ... from``. The stage runtime routes by family:

- :class:`InputError` and its children are *deterministic*: the same bytes fail
  the same way every time, so the message goes to the DLQ with ``reason``.
- :class:`TransientError` means a dependency is away (broker, Redis, blob store: a
  file-system error such as EIO, EACCES or ENOSPC is :class:`StorageUnavailable`) or
  the process ran out of memory (:class:`ResourceExhausted`, translated from
  ``MemoryError`` and CUDA out-of-memory by the runtime); the runtime retries with
  bounded backoff, then pauses and retries again.
- :class:`ConfigError` is a bad setting or file given by the operator; commands
  print one line and exit non-zero.
"""

from __future__ import annotations


class LithowatchError(Exception):
    """Base of every error lithowatch raises on purpose."""

    reason: str = "error"


class ConfigError(LithowatchError):
    """Invalid settings, paths or files given by the operator."""

    reason = "config"


class InputError(LithowatchError):
    """A message or file that can never be processed (goes to the DLQ)."""

    reason = "invalid_input"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class DecodeError(InputError):
    """Bytes that are not a valid message of the expected contract."""

    reason = "decode"


class ImageError(InputError):
    """An image that is empty, corrupt, too large, of the wrong dtype or shape."""

    reason = "image"


class BlobAccessError(InputError):
    """A blob URI that is unknown, escapes the store root or is not allowed."""

    reason = "blob_uri"


class ContractError(InputError):
    """A value that breaks an array or model contract (dimension, model version...)."""

    reason = "contract"


class TransientError(LithowatchError):
    """A dependency is temporarily unavailable; retry later, never drop."""

    reason = "transient"


class DependencyUnavailable(TransientError):
    """The broker, Redis or the blob store did not answer."""

    reason = "dependency_unavailable"


class StorageUnavailable(DependencyUnavailable):
    """The blob store's file system failed (I/O error, permission, disk full): infrastructure, not input."""

    reason = "storage_unavailable"


class ResourceExhausted(TransientError):
    """The process ran out of memory (host or GPU) on a batch: the machine's state, not the input's."""

    reason = "resource_exhausted"
