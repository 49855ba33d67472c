"""Dead letters: the DLQ records the runtime writes, and the size checks that decide some of them.

The policy (which failure of which phase is dead-lettered) is written once, in the
docstring of :mod:`shared.runtime`; this module builds what it sends:

- :class:`DeadLetters` turns an input record and a reason into a :class:`DLQRecord`
  output, keeping the original bytes inline (base64) when they fit under the message
  limit with the record around them, else in the blob store by reference, and, for a
  result on its way to a verdict, the result's ``dead_lettered`` verdict
  (:mod:`shared.verdicts`) beside it;
- :func:`decode` reads an input as its contract (a tolerant reader: unknown fields of a
  newer minor version are ignored), or says why not (the reason a DLQ record carries:
  ``empty_message``, ``too_large``, ``invalid_json``, ``schema_version_unsupported``, ...);
- :class:`OutputSizes` finds an output over the message limit before it is sent (the
  broker would refuse it whatever the retries, so it is its input's verdict), and keeps
  what it serialised so each output is encoded once.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.blobstore import LocalBlobStore
from shared.contracts import Contract, DLQRecord, Topics
from shared.imaging import sha256_hex
from shared.stage import Output
from shared.verdicts import VERDICT_LABELS_MAX_BYTES, dead_letter_verdict

log = logging.getLogger("lithowatch.runtime")

DLQ_INLINE_LIMIT_BYTES = 512 * 1024
DLQ_RECORD_OVERHEAD_BYTES = 32 * 1024  # error text, headers, key and field names
OUTPUT_HEADER_ALLOWANCE_BYTES = 1024  # the headers a stage adds to an output (result id, timestamps)


def header_bytes(headers: Any) -> int:
    """Bytes of a record's headers as the broker counts them (names and values; a null value is 0)."""
    return sum(len(k.encode()) + len(v or b"") for k, v in headers or [])


def header_value(record: Any, name: str) -> str | None:
    """A header of a record as text; None when absent or null."""
    for key, value in record.headers or []:
        if key == name and value is not None:  # a null header value (legal in Kafka) says nothing
            return bytes(value).decode(errors="replace")
    return None


def reason_for_validation(exc: ValidationError) -> str:
    kinds = {str(err.get("type")) for err in exc.errors()}
    if "schema_version_unsupported" in kinds:  # a newer major: nothing else about it is checked
        return "schema_version_unsupported"
    if "json_invalid" in kinds or "json_type" in kinds:
        return "invalid_json"
    if "extra_forbidden" in kinds:
        return "unknown_field"
    if "missing" in kinds:
        return "missing_field"
    return "schema"


def short_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


def decode(record: Any, model: type[Contract], max_message_bytes: int) -> Contract | tuple[str, str]:
    """The record's value as ``model`` (read tolerantly: :meth:`Contract.from_wire`), or
    (reason, error) saying why it is not one."""
    value: bytes | None = record.value
    if value is None:
        return "empty_message", "message has no value"
    size = len(value) + header_bytes(record.headers)
    if size > max_message_bytes:
        return "too_large", f"message of {size} bytes (value and headers) is over {max_message_bytes}"
    try:
        return model.from_wire(value)
    except ValidationError as exc:
        return reason_for_validation(exc), short_validation(exc)
    except ValueError as exc:  # e.g. invalid UTF-8
        return "invalid_json", str(exc)


def inline_limit(max_message_bytes: int) -> int:
    """Largest value kept inline: its base64 plus the record must fit under the message limit.

    An over-size input inlined as base64 would make a DLQ record the producer refuses,
    and the stage would retry that batch for ever.
    """
    fits = (max_message_bytes - DLQ_RECORD_OVERHEAD_BYTES) * 3 // 4
    return max(0, min(DLQ_INLINE_LIMIT_BYTES, fits))


class DeadLetters:
    """Builds a stage's DLQ outputs; values too large to inline go to the blob store."""

    def __init__(self, stage: str, max_message_bytes: int, blob_root: Path) -> None:
        self.stage = stage
        self.max_message_bytes = max_message_bytes
        self.blob_root = blob_root
        self._blobs: LocalBlobStore | None = None

    def outputs(self, record: Any, reason: str, error: str) -> list[Output]:
        """The DLQ record of ``record``, then its result's ``dead_lettered`` verdict when it gets one."""
        dlq = self.record(record, reason, error)
        value: bytes | None = record.value
        readable = value if value is not None and len(value) <= inline_limit(self.max_message_bytes) else None
        key = dlq.result_id or f"{record.topic}-{record.partition}-{record.offset}"
        outputs = [Output(Topics.DLQ, dlq, key)]
        labels_max_bytes = min(VERDICT_LABELS_MAX_BYTES, self.max_message_bytes // 8)
        verdict = dead_letter_verdict(dlq, readable, labels_max_bytes)
        if verdict is not None:
            outputs.append(Output(Topics.VERDICTS, verdict, verdict.result_id))
        return outputs

    def record(self, record: Any, reason: str, error: str) -> DLQRecord:
        """The DLQ record of ``record`` (its value inline, or stored in the blob store when large)."""
        value: bytes = record.value or b""
        value_b64: str | None = None
        value_uri: str | None = None
        if len(value) <= inline_limit(self.max_message_bytes):
            value_b64 = base64.b64encode(value).decode("ascii")
        else:
            if self._blobs is None:
                self._blobs = LocalBlobStore(self.blob_root, max_bytes=1 << 31)
            value_uri = self._blobs.put(value, sha256_hex(value), "bin")
        key: bytes | None = record.key
        result_id = header_value(record, "result_id") or (key.decode(errors="replace") if key else None)
        headers = {  # a null header value is kept as an empty string
            k: "" if v is None else bytes(v).decode(errors="replace") for k, v in (record.headers or [])
        }
        dlq = DLQRecord(
            stage=self.stage,
            reason=reason,
            error=error[:2000],
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key_b64=base64.b64encode(key).decode("ascii") if key else None,
            value_b64=value_b64,
            value_uri=value_uri,
            value_bytes=len(value),
            result_id=result_id,
            headers=headers,
        )
        log.warning(
            "%s: DLQ %s@%d/%d: %s: %s",
            self.stage,
            record.topic,
            record.partition,
            record.offset,
            reason,
            error[:200],
        )
        return dlq


class OutputSizes:
    """Checks outputs against the message limit, keeping each one's JSON for the produce."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._encoded: dict[int, tuple[Output, bytes]] = {}

    def clear(self) -> None:
        self._encoded.clear()

    def oversized(self, record: Any, outputs: Sequence[Output]) -> str | None:
        """Why an output of this input cannot be produced (over the message limit), or None.

        The broker refuses such a record whatever the retries, so it is this input's
        verdict (dead-lettered with the reason), not a transient failure that would
        block the partition. Header bytes count: the input's are copied onto outputs.
        """
        limit = self.max_message_bytes
        headers = header_bytes(record.headers) + OUTPUT_HEADER_ALLOWANCE_BYTES
        for out in outputs:
            encoded = out.value.model_dump_json().encode()
            self._encoded[id(out)] = (out, encoded)
            size = len(encoded) + len(out.key) + headers
            if size > limit:
                return f"output to {out.topic} of about {size} bytes is over the {limit}-byte message limit"
        return None

    def encoded(self, out: Output) -> bytes:
        """The output's JSON, serialised once: by the size check when it ran on this very object."""
        cached = self._encoded.pop(id(out), None)
        if cached is not None and cached[0] is out:
            return cached[1]
        return out.value.model_dump_json().encode()
