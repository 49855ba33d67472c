"""Message contracts: one pydantic v2 model per topic, the single source of truth.

``schemas/`` holds the JSON Schema generated from these models
(``lithowatch schemas --out schemas``); a test fails when they drift. Topic names
carry a version; a breaking change is a new topic version.

Evolution (``docs/contracts.md``): writers are strict, readers tolerant. A record built
in code refuses fields its model does not know; a record read from a topic
(:meth:`Contract.from_wire`) ignores them, so a record of a newer minor version (one that
added optional fields) is read by older readers. Every topic record states its version
as ``schema_version`` (the major, also in the topic name) and ``schema_minor``; a reader
refuses a major it does not know (``schema_version_unsupported``) and reads any minor.

Each stage's output extends its input, so a message downstream still carries
everything upstream knew (hashes, transform, vector) and consumers can explain
any decision from the record alone.

The building blocks the records are made of (the :class:`Contract` base, images, vectors,
hashes, transforms, neighbours, labels) live in :mod:`shared.contract_types`; every one of
them is importable from here as well.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import Field, ValidationInfo, field_serializer, field_validator, model_validator
from pydantic_core import PydanticCustomError

from shared.contract_types import WIRE_CONTEXT as WIRE_CONTEXT
from shared.contract_types import Contract as Contract
from shared.contract_types import Hashes as Hashes
from shared.contract_types import ImageRef as ImageRef
from shared.contract_types import Labels as Labels
from shared.contract_types import LabelValue as LabelValue
from shared.contract_types import Neighbour as Neighbour
from shared.contract_types import ResultId as ResultId
from shared.contract_types import Transform as Transform
from shared.contract_types import Vector as Vector
from shared.contract_types import read_tolerant as read_tolerant
from shared.contract_types import utcnow as utcnow
from shared.errors import ContractError

SCHEMA_VERSION: Final = 1
"""The major version of every contract (the ``v1`` in the topic names)."""
SCHEMA_MINOR: Final = 1
"""The minor version this code writes: 1 added ``schema_minor``, the verdicts topic, and the
farm's ids and the alignment flag on scores and alerts. A record without ``schema_minor``
was written at minor 0."""


class Topics:
    """Versioned topic names. The library topic is compacted (key = entry id)."""

    RESULTS = "lithowatch.results.v1"
    UNIQUE = "lithowatch.unique.v1"
    DUPLICATES = "lithowatch.duplicates.v1"
    ALIGNED = "lithowatch.aligned.v1"
    EMBEDDED = "lithowatch.embedded.v1"
    SCORES = "lithowatch.scores.v1"
    ALERTS = "lithowatch.alerts.v1"
    EXPLANATIONS = "lithowatch.explanations.v1"
    LIBRARY = "lithowatch.library.v1"
    DLQ = "lithowatch.dlq.v1"
    VERDICTS = "lithowatch.verdicts.v1"
    FEEDBACK = "lithowatch.feedback.v1"

    @classmethod
    def all(cls) -> list[str]:
        return [
            cls.RESULTS,
            cls.UNIQUE,
            cls.DUPLICATES,
            cls.ALIGNED,
            cls.EMBEDDED,
            cls.SCORES,
            cls.ALERTS,
            cls.EXPLANATIONS,
            cls.LIBRARY,
            cls.DLQ,
            cls.VERDICTS,
            cls.FEEDBACK,
        ]

    @classmethod
    def compacted(cls) -> set[str]:
        return {cls.LIBRARY}


class Record(Contract):
    """Base of every topic's record: the contract version it was written at (major, minor)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    schema_minor: Annotated[int, Field(ge=0)] = SCHEMA_MINOR

    @model_validator(mode="before")
    @classmethod
    def _unstated_minor(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and "schema_minor" not in data and (info.context or {}).get(WIRE_CONTEXT):
            return {**data, "schema_minor": 0}  # written before minor versions were stated
        return data

    @field_validator("schema_version", mode="before")
    @classmethod
    def _known_major(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value != SCHEMA_VERSION:
            raise PydanticCustomError(
                "schema_version_unsupported",
                "schema_version {version} is not read here: this reader reads major version {major} "
                "(any minor); a newer major is published on a new topic version",
                {"version": value, "major": SCHEMA_VERSION},
            )
        return value

    @field_serializer("schema_minor")
    def _written_minor(self, _minor: int) -> int:
        """A record is written at this code's minor: fields of a newer one were not kept."""
        return SCHEMA_MINOR


class SimResult(Record):
    """What a farm publishes when a simulation finishes (topic ``results``)."""

    result_id: ResultId
    job_id: str = ""
    clip_id: str = ""
    nm_per_px: Annotated[float, Field(gt=0, le=1e4)]
    mask: ImageRef
    simulated: ImageRef
    labels: Labels = Field(default_factory=dict)
    produced_at: datetime


class UniqueResult(SimResult):
    """A result that is not a duplicate of an earlier one (topic ``unique``)."""

    hashes: Hashes


DuplicateMethod = Literal["exact", "perceptual", "embedding+hash", "embedding+descriptors"]


class DuplicateRecord(Record):
    """A result recognised as a re-simulation of an earlier one (topic ``duplicates``)."""

    result_id: ResultId
    duplicate_of: str
    method: DuplicateMethod
    distance: float
    stage: str
    labels: Labels = Field(default_factory=dict)
    produced_at: datetime
    detected_at: datetime = Field(default_factory=utcnow)
    details: dict[str, Any] = Field(default_factory=dict)


class AlignedResult(UniqueResult):
    """The print registered onto the mask frame (topic ``aligned``)."""

    aligned_simulated: ImageRef
    transform: Transform
    alignment_flagged: bool = False
    alignment_reason: str = ""


class EmbeddedResult(AlignedResult):
    """An aligned result with its L2-normalised embedding (topic ``embedded``)."""

    embedding: Vector
    model_version: str


Decision = Literal["known", "novel", "provisional"]


class ScoreRecord(Record):
    """The novelty score of every scored result (topic ``scores``), with the farm's ids and
    whether its alignment was flagged (a misregistered print can look novel)."""

    result_id: ResultId
    novelty_score: float
    threshold: float
    decision: Decision
    cluster: int | None = None
    neighbours: list[Neighbour] = Field(default_factory=list)
    provisional_of: str | None = None
    model_version: str
    labels: Labels = Field(default_factory=dict)
    job_id: str = ""
    clip_id: str = ""
    alignment_flagged: bool = False
    alignment_reason: str = ""
    produced_at: datetime
    scored_at: datetime = Field(default_factory=utcnow)


class AlertRecord(Record):
    """A novel result, with what it was compared against (topic ``alerts``)."""

    alert_id: str
    result_id: ResultId
    novelty_score: float
    threshold: float
    cluster: int | None = None
    neighbours: list[Neighbour]
    mask: ImageRef
    simulated: ImageRef
    model_version: str
    labels: Labels = Field(default_factory=dict)
    job_id: str = ""
    clip_id: str = ""
    alignment_flagged: bool = False
    alignment_reason: str = ""
    produced_at: datetime
    raised_at: datetime = Field(default_factory=utcnow)


class ExplanationRecord(Record):
    """A rendered side-by-side panel for an alert (topic ``explanations``)."""

    alert_id: str
    result_id: ResultId
    panel: ImageRef
    neighbour_ids: list[str]
    summary: str
    produced_at: datetime
    rendered_at: datetime = Field(default_factory=utcnow)


class LibraryEntry(Record):
    """One reference result (compacted topic ``library``, key = ``entry_id``).

    A deletion (``library drop``) is published as a Kafka tombstone: key ``entry_id``, null
    value, which compaction removes together with the entry's earlier records. Readers
    also apply ``op="delete"`` entries (earlier writers). Tansu does not compact, so
    readers always take the last record per key as the truth.
    """

    entry_id: str
    op: Literal["upsert", "delete"] = "upsert"
    status: Literal["reference", "provisional"] = "reference"
    vector: Vector | None = None
    model_version: str
    labels: Labels = Field(default_factory=dict)
    mask: ImageRef | None = None
    simulated: ImageRef | None = None
    alert_id: str | None = None
    hashes: Hashes | None = None
    created_at: datetime = Field(default_factory=utcnow)
    nm_per_px: Annotated[float | None, Field(gt=0, le=1e4)] = None
    """The clip's scale, so ``library reembed`` can feed the images to a model with a canonical scale."""

    @model_validator(mode="after")
    def _vector_for_upserts(self) -> LibraryEntry:
        if self.op == "upsert" and self.vector is None:
            raise ValueError("an upsert library entry needs a vector")
        return self


class DLQRecord(Record):
    """A message a stage could not process, with the reason and the original bytes."""

    stage: str
    reason: str
    error: str
    topic: str
    partition: int
    offset: int
    key_b64: str | None = None
    value_b64: str | None = None
    value_uri: str | None = None
    value_bytes: int = 0
    result_id: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    failed_at: datetime = Field(default_factory=utcnow)


VerdictOutcome = Literal["scored", "duplicate", "dead_lettered"]
_OUTCOME_FIELDS: dict[str, tuple[str, ...]] = {
    "scored": ("decision", "novelty_score", "threshold", "model_version"),
    "duplicate": ("duplicate_of", "method"),
    "dead_lettered": ("reason",),
}


class VerdictRecord(Record):
    """What became of one result (topic ``verdicts``, key = ``result_id``).

    ``scored`` (with the decision, score, threshold and model), ``duplicate`` (of which
    result, by which method) or ``dead_lettered`` (the reason; the DLQ record holds the
    original bytes). ``stage`` is the stage that decided. A result can get several verdicts
    (dead-lettered, then replayed and scored; a redelivery): they share the key, hence the
    partition, and **the latest per result_id is the truth**. The farm's ids, labels and the
    alignment flag are filled in where the deciding stage knew them (``alignment_flagged`` is
    None before alignment; a dead letter of an unreadable message knows only its id).
    """

    result_id: ResultId
    outcome: VerdictOutcome
    stage: str
    job_id: str = ""
    clip_id: str = ""
    labels: Labels = Field(default_factory=dict)
    alignment_flagged: bool | None = None
    alignment_reason: str = ""
    decision: Decision | None = None
    novelty_score: float | None = None
    threshold: float | None = None
    model_version: str | None = None
    alert_id: str | None = None
    provisional_of: str | None = None
    duplicate_of: str | None = None
    method: DuplicateMethod | None = None
    reason: str | None = None
    error: Annotated[str, Field(max_length=500)] = ""
    produced_at: datetime | None = None
    decided_at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _outcome_fields(self) -> VerdictRecord:
        missing = [name for name in _OUTCOME_FIELDS[self.outcome] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.outcome} verdict needs {', '.join(missing)}")
        return self


class FeedbackRecord(Record):
    """A reviewer's decision on a library entry (topic ``feedback``, key = ``entry_id``).

    ``lithowatch library promote`` / ``drop`` write one per entry: who decided, why and when,
    with the entry's vector, model and labels as they were (a dropped entry is gone from the
    library topic). Every decision is kept (not compacted); ``lithowatch calibrate --feedback``
    reads them as labels: promoted as known, dropped as novel.
    """

    entry_id: str
    decision: Literal["promoted", "dropped"]
    by: Annotated[str, Field(min_length=1, max_length=200)]
    reason: Annotated[str, Field(max_length=2000)] = ""
    model_version: str
    status: Literal["reference", "provisional"] = "provisional"  # the entry's status before the decision
    vector: Vector | None = None
    labels: Labels = Field(default_factory=dict)
    alert_id: str | None = None
    decided_at: datetime = Field(default_factory=utcnow)


TOPIC_MODELS: dict[str, type[Contract]] = {
    Topics.RESULTS: SimResult,
    Topics.UNIQUE: UniqueResult,
    Topics.DUPLICATES: DuplicateRecord,
    Topics.ALIGNED: AlignedResult,
    Topics.EMBEDDED: EmbeddedResult,
    Topics.SCORES: ScoreRecord,
    Topics.ALERTS: AlertRecord,
    Topics.EXPLANATIONS: ExplanationRecord,
    Topics.LIBRARY: LibraryEntry,
    Topics.DLQ: DLQRecord,
    Topics.VERDICTS: VerdictRecord,
    Topics.FEEDBACK: FeedbackRecord,
}


def model_for_topic(topic: str) -> type[Contract]:
    try:
        return TOPIC_MODELS[topic]
    except KeyError as exc:
        known = ", ".join(sorted(TOPIC_MODELS))
        raise ContractError(f"unknown topic {topic!r}; known: {known}") from exc


SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every topic, keyed by topic name, with its dialect (``$schema``) and a
    stable identifier (``$id``: ``urn:lithowatch:schema:<topic>``) for registries and ``$ref``."""
    return {
        topic: {
            "$schema": SCHEMA_DIALECT,
            "$id": f"urn:lithowatch:schema:{topic}",
            **model.model_json_schema(),
        }
        for topic, model in TOPIC_MODELS.items()
    }
