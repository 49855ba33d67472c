"""The versioned thresholds file that calibration writes and the novelty service reads.

It sits with the library, not with the calibration toolkit, so that the service
reads it (and :mod:`shared.index.policy` applies it) without importing the
toolkit; :mod:`toolkit.calibration` re-exports it for the toolkit's users.

One JSON document (:class:`ThresholdsFile`). The novelty score it speaks of is
``novelty_score = 1 - max cosine similarity to the library (top-1)`` and a
result is novel when ``novelty_score >= threshold``. The threshold is global,
or per cluster when ``clusters`` is present (nearest centroid by cosine). Optional
conformal calibration scores let the service gate by a false discovery rate.
An optional ``near_identity`` gate says how near a library neighbour must be
before hybrid duplicate confirmation checks the pair on pixels. An optional
``score_reference`` records what the novelty scores of known results looked like
at calibration: the baseline the novelty service's drift watch compares the
stream with (files written before it existed have none, and get no drift gauge).

Writes are atomic (temporary file in the same folder, fsync, rename), so a
service reloading the file never reads half of it. Every problem reading a file
is a :class:`~shared.errors.ConfigError` naming the file.

The file follows the contracts' compatibility rule (``docs/contracts.md``): the writer is
strict (a field the model does not know is refused), the reader tolerant
(:func:`~shared.contract_types.read_tolerant`: fields it does not know, at any depth, are
ignored, so a file a newer lithowatch wrote with an added optional field loads here); a newer
``schema_version`` is refused.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.contract_types import read_tolerant
from shared.errors import ConfigError

THRESHOLDS_SCHEMA_VERSION: Final = 1
NOVELTY_SCORE_DEFINITION: Final = "1 - max cosine similarity to library (top-1)"
DECISION_RULE: Final = "novel when novelty_score >= threshold"
CONFORMAL_SCORES_MAX = 20_000
REFERENCE_QUANTILES_MAX = 1001
REFERENCE_BINS_MAX = 100
MAX_FILE_BYTES = 64 * 1024 * 1024


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CandidateThreshold(_Frozen):
    """A threshold one method proposed, with its scores on the calibration split."""

    method: str
    threshold: float | None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    fpr: float | None = None
    note: str = ""


class ClusterThreshold(_Frozen):
    cluster_id: int = Field(ge=0)
    centroid: list[float] = Field(min_length=1)
    threshold: float = Field(ge=0.0, le=2.0)
    size: int = Field(default=0, ge=0)
    fallback: bool = False

    @field_validator("centroid")
    @classmethod
    def _finite_unit(cls, value: list[float]) -> list[float]:
        if not all(math.isfinite(v) for v in value):
            raise ValueError("centroid contains NaN or infinity")
        if math.sqrt(sum(v * v for v in value)) <= 1e-12:
            raise ValueError("centroid has zero norm")
        return value


class ConformalCalibration(_Frozen):
    """Novelty scores of known results, for split-conformal p-values (sorted, capped)."""

    scores: list[float] = Field(min_length=1, max_length=CONFORMAL_SCORES_MAX)
    n_total: int = Field(ge=1)
    source: str = "known queries, calibration split"

    @field_validator("scores")
    @classmethod
    def _finite(cls, value: list[float]) -> list[float]:
        if not all(math.isfinite(v) for v in value):
            raise ValueError("scores contain NaN or infinity")
        return value


class NearIdentityGate(_Frozen):
    """The hybrid confirmation's similarity gate for this model (:mod:`toolkit.calibration.near_identity`)."""

    similarity: float = Field(ge=0.0, le=1.0)  # cosine: pixel checks only for neighbours at least this near
    quantile: float = Field(ge=0.0, lt=0.5)  # of the same-group pair similarities it was read from
    n_pairs: int = Field(ge=1)
    pair_min: float | None = None
    pair_median: float | None = None
    group_label: str = "group"


class ScoreReference(_Frozen):
    """The novelty scores of known results at calibration, as the drift watch's baseline.

    ``quantiles`` are the scores at evenly spaced probabilities ``0, 1/(m-1), ..., 1`` (for a
    KS distance); ``bin_edges`` cut the score axis into ``len(bin_edges) + 1`` bins, bin ``j``
    holding the scores ``s`` with ``bin_edges[j-1] <= s < bin_edges[j]`` (the first open
    below, the last open above), and ``bin_proportions`` is the share of the scores in each
    (for a population stability index).
    """

    quantiles: list[float] = Field(min_length=2, max_length=REFERENCE_QUANTILES_MAX)
    bin_edges: list[float] = Field(max_length=REFERENCE_BINS_MAX - 1)
    bin_proportions: list[float] = Field(min_length=1, max_length=REFERENCE_BINS_MAX)
    n_scores: int = Field(ge=1)
    source: str = "known results, each scored against the other known results (leave one out)"

    @model_validator(mode="after")
    def _consistent(self) -> ScoreReference:
        values = [*self.quantiles, *self.bin_edges, *self.bin_proportions]
        if not all(math.isfinite(v) for v in values):
            raise ValueError("score reference contains NaN or infinity")
        if any(b < a for a, b in zip(self.quantiles, self.quantiles[1:], strict=False)):
            raise ValueError("score reference quantiles must not decrease")
        if any(b <= a for a, b in zip(self.bin_edges, self.bin_edges[1:], strict=False)):
            raise ValueError("score reference bin edges must increase")
        if len(self.bin_proportions) != len(self.bin_edges) + 1:
            raise ValueError("score reference needs one more bin proportion than bin edges")
        if any(p < 0 for p in self.bin_proportions) or abs(sum(self.bin_proportions) - 1.0) > 1e-6:
            raise ValueError("score reference bin proportions must be shares that sum to 1")
        return self


class ThresholdsFile(_Frozen):
    schema_version: Literal[1] = THRESHOLDS_SCHEMA_VERSION
    model_version: str = Field(min_length=1)
    created_at: datetime = Field(default_factory=_utcnow)
    metric: Literal["cosine"] = "cosine"
    novelty_score: Literal["1 - max cosine similarity to library (top-1)"] = NOVELTY_SCORE_DEFINITION
    decision: Literal["novel when novelty_score >= threshold"] = DECISION_RULE
    embedding_dim: int | None = Field(default=None, ge=1)
    global_threshold: float = Field(ge=0.0, le=2.0)
    method: str
    method_reason: str = ""
    candidates: list[CandidateThreshold] = Field(default_factory=list)
    clusters: list[ClusterThreshold] | None = None
    cluster_rule: str | None = None
    conformal: ConformalCalibration | None = None
    calibration: dict[str, float | int | str | None] = Field(default_factory=dict)
    near_identity: NearIdentityGate | None = None
    score_reference: ScoreReference | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ThresholdsFile:
        if not math.isfinite(self.global_threshold):
            raise ValueError("global_threshold must be finite")
        if self.clusters is not None:
            if not self.clusters:
                raise ValueError("clusters, when present, must not be empty")
            ids = [c.cluster_id for c in self.clusters]
            if len(set(ids)) != len(ids):
                raise ValueError("duplicate cluster_id")
            dims = {len(c.centroid) for c in self.clusters}
            if len(dims) != 1:
                raise ValueError("centroids have different dimensions")
            if self.embedding_dim is not None and dims != {self.embedding_dim}:
                raise ValueError(f"centroid dimension {dims.pop()} != embedding_dim {self.embedding_dim}")
        return self


def save_thresholds(path: str | Path, thresholds: ThresholdsFile) -> Path:
    """Write atomically; returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = thresholds.model_dump_json(indent=2) + "\n"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ())) or "(document)"
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {error.get('msg', 'invalid')}{extra}"


def parse_thresholds(raw: Any, source: str = "thresholds") -> ThresholdsFile:
    """Validate an already decoded JSON object (a tolerant reader: unknown fields are ignored)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    version = raw.get("schema_version")
    if isinstance(version, int) and version > THRESHOLDS_SCHEMA_VERSION:
        raise ConfigError(
            f"{source}: schema_version {version} is newer than this lithowatch understands "
            f"({THRESHOLDS_SCHEMA_VERSION}); upgrade lithowatch"
        )
    try:
        return read_tolerant(ThresholdsFile, raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid thresholds file: {_first_error(exc)}") from exc


def load_thresholds(path: str | Path) -> ThresholdsFile:
    """Read and validate a thresholds file; any problem is one ConfigError line."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: thresholds file is {size} bytes, over {MAX_FILE_BYTES}")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: thresholds file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read thresholds file ({exc})") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    return parse_thresholds(raw, str(path))
