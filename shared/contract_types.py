"""The building blocks of the message contracts (:mod:`shared.contracts`).

The base every message derives from (:class:`Contract`, strict when built in code, tolerant
when read back with :meth:`Contract.from_wire`), the value types records are made of (images,
vectors, hashes, a transform, a neighbour) and the label types. :mod:`shared.contracts` builds
the topics' records from these and re-exports every name, so ``from shared.contracts import X``
works for all of them.

:func:`read_tolerant` is the reader's side of the compatibility rule (``docs/contracts.md``),
for files as well as topics: fields a model does not know are ignored, at any depth.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Self, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.errors import ContractError

WIRE_CONTEXT: Final = "lithowatch.wire"
"""Validation context key set on records read from a topic."""

_ModelT = TypeVar("_ModelT", bound=BaseModel)


def read_tolerant(
    model: type[_ModelT],
    data: bytes | bytearray | str | Mapping[str, Any],
    context: dict[str, Any] | None = None,
) -> _ModelT:
    """``data`` (JSON text, or an already decoded object) as ``model``, read as a tolerant reader:
    fields the model does not know are ignored at any depth (a newer minor version added them),
    everything else is checked as strictly as ever. Raises :class:`pydantic.ValidationError`."""
    if isinstance(data, Mapping):
        return model.model_validate(data, extra="ignore", context=context)
    return model.model_validate_json(data, extra="ignore", context=context)


LabelValue = str | int | float | bool | None
Labels = dict[str, LabelValue]
ResultId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:\-]+$")]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """Base of every message: values are immutable; unknown fields are refused when a record is
    built in code (writers are strict) and ignored when it is read from a topic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def from_wire(cls, data: bytes | bytearray | str) -> Self:
        """A record read from a topic (JSON): fields this model does not know are ignored (they
        belong to a newer minor version); a newer major is refused (``schema_version_unsupported``).
        Raises :class:`pydantic.ValidationError` like ``model_validate_json``."""
        return read_tolerant(cls, data, context={WIRE_CONTEXT: True})


class ImageRef(Contract):
    """An image, inline (small PNG/NPY bytes, base64 in JSON) or by URI into a blob store."""

    format: Literal["png", "npy"]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    shape: tuple[int, int]
    dtype: Literal["uint8", "uint16", "float32"]
    inline_b64: str | None = None
    uri: Annotated[str | None, Field(max_length=2048)] = None

    @model_validator(mode="after")
    def _one_location(self) -> ImageRef:
        if (self.inline_b64 is None) == (self.uri is None):
            raise ValueError("an ImageRef has exactly one of inline_b64 or uri")
        if self.shape[0] <= 0 or self.shape[1] <= 0:
            raise ValueError("shape must be positive")
        return self

    def inline_bytes(self) -> bytes:
        if self.inline_b64 is None:
            raise ContractError("ImageRef is not inline")
        try:
            return base64.b64decode(self.inline_b64, validate=True)
        except ValueError as exc:
            raise ContractError(f"inline image is not valid base64: {exc}", reason="base64") from exc


class Vector(Contract):
    """An embedding: base64 of little-endian float32, with its dimension."""

    dim: Annotated[int, Field(gt=0, le=65536)]
    b64: str

    @classmethod
    def from_array(cls, array: np.ndarray) -> Vector:
        flat = np.ascontiguousarray(array, dtype="<f4").reshape(-1)
        return cls(dim=int(flat.shape[0]), b64=base64.b64encode(flat.tobytes()).decode("ascii"))

    def to_array(self) -> np.ndarray:
        try:
            raw = base64.b64decode(self.b64, validate=True)
        except ValueError as exc:
            raise ContractError(f"vector is not valid base64: {exc}", reason="base64") from exc
        if len(raw) != 4 * self.dim:
            raise ContractError(
                f"vector holds {len(raw)} bytes, expected {4 * self.dim}", reason="vector_dim"
            )
        array = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if not np.isfinite(array).all():
            raise ContractError("vector contains NaN or infinity", reason="vector_nonfinite")
        return array


class Hashes(Contract):
    """Hashes the dedupe stage computed (hex strings)."""

    exact: str
    perceptual: dict[str, str] = Field(default_factory=dict)


class Transform(Contract):
    """A 3x3 homography (row-major) taking print coordinates to mask coordinates."""

    matrix: tuple[float, float, float, float, float, float, float, float, float]
    method: str
    quality: float
    residual_px: float | None = None

    @classmethod
    def identity(cls, method: str = "identity", quality: float = 1.0) -> Transform:
        return cls(matrix=(1, 0, 0, 0, 1, 0, 0, 0, 1), method=method, quality=quality)

    def as_array(self) -> np.ndarray:
        return np.asarray(self.matrix, dtype=np.float64).reshape(3, 3)


class Neighbour(Contract):
    id: str
    similarity: float
    labels: Labels = Field(default_factory=dict)
    mask: ImageRef | None = None
    simulated: ImageRef | None = None
    provisional: bool = False
    alert_id: str | None = None
