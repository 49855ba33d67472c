"""Verdicts: what became of each result, one topic a downstream system can read.

Every result ends in a :class:`~shared.contracts.VerdictRecord` on ``lithowatch.verdicts.v1``
(key = ``result_id``): ``scored`` (novelty), ``duplicate`` (dedupe's exact or perceptual match,
novelty's hybrid confirmation) or ``dead_lettered`` (any stage on the result's path, written by
the runtime beside the DLQ record). The builders here are pure; the stages and the runtime add
the verdict to the outputs of the input it concerns, so it is produced and acknowledged before
that input's offset is committed, like every other output.

A result can get more than one verdict (dead-lettered, then replayed with ``lithowatch dlq
replay`` and scored; a redelivery): they share the key, hence the partition, so the latest
record per ``result_id`` is the truth.

Dead letters that get no verdict: those of inputs off the result path (alerts at the explain
stage: the result is already scored), those whose result id is unknown or not a valid id, and
``result_id_reused`` (the message reuses an id already decided for another result: a verdict
under that id would overwrite the earlier result's).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from shared.contracts import (
    AlignedResult,
    DLQRecord,
    DuplicateRecord,
    Labels,
    ScoreRecord,
    SimResult,
    Topics,
    VerdictRecord,
)

RESULT_PATH_TOPICS = frozenset({Topics.RESULTS, Topics.UNIQUE, Topics.ALIGNED, Topics.EMBEDDED})
"""Input topics whose records are results on their way to a verdict."""
NO_VERDICT_REASONS = frozenset({"result_id_reused"})
"""Dead-letter reasons that say nothing about the result named by the id (see the module docstring)."""
VERDICT_LABELS_MAX_BYTES = 16 * 1024
"""Labels of a dead-lettered message larger than this (as JSON) are left out of its verdict (the
runtime lowers the bound under a small message limit, so the verdict always fits)."""
VERDICT_ERROR_MAX_CHARS = 500

_LABELS = TypeAdapter(Labels)
_MOMENT = TypeAdapter(datetime)


def _alignment(result: SimResult) -> tuple[bool | None, str]:
    if isinstance(result, AlignedResult):
        return result.alignment_flagged, result.alignment_reason
    return None, ""


def scored_verdict(score: ScoreRecord, stage: str, alert_id: str | None = None) -> VerdictRecord:
    """The verdict of a scored result (its alert's id when it raised one)."""
    return VerdictRecord(
        result_id=score.result_id,
        outcome="scored",
        stage=stage,
        job_id=score.job_id,
        clip_id=score.clip_id,
        labels=score.labels,
        alignment_flagged=score.alignment_flagged,
        alignment_reason=score.alignment_reason,
        decision=score.decision,
        novelty_score=score.novelty_score,
        threshold=score.threshold,
        model_version=score.model_version,
        alert_id=alert_id,
        provisional_of=score.provisional_of,
        produced_at=score.produced_at,
    )


def duplicate_verdict(duplicate: DuplicateRecord, result: SimResult) -> VerdictRecord:
    """The verdict of a result found to be a duplicate (``result`` is the input it was found for)."""
    flagged, reason = _alignment(result)
    return _duplicate(duplicate, result.job_id, result.clip_id, duplicate.labels or result.labels, flagged,
                      reason, result.produced_at)


def late_duplicate_verdict(duplicate: DuplicateRecord, job_id: str, clip_id: str) -> VerdictRecord:
    """The verdict of a result shown to be a duplicate after it was passed on as unique (a *late*
    duplicate, ``details.late`` on its record): it supersedes the result's earlier verdict."""
    return _duplicate(duplicate, job_id, clip_id, duplicate.labels, None, "", duplicate.produced_at)


def _duplicate(duplicate: DuplicateRecord, job_id: str, clip_id: str, labels: Labels, flagged: bool | None,
               reason: str, produced_at: datetime) -> VerdictRecord:
    return VerdictRecord(
        result_id=duplicate.result_id,
        outcome="duplicate",
        stage=duplicate.stage,
        job_id=job_id,
        clip_id=clip_id,
        labels=labels,
        alignment_flagged=flagged,
        alignment_reason=reason,
        duplicate_of=duplicate.duplicate_of,
        method=duplicate.method,
        produced_at=produced_at,
    )


def _known_fields(value: bytes | None, labels_max_bytes: int) -> dict[str, Any]:
    """What a dead-lettered message says of its result, read leniently (it may be invalid)."""
    if not value:
        return {}
    try:
        doc = json.loads(value)
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    known: dict[str, Any] = {}
    for name in ("job_id", "clip_id", "alignment_reason"):
        if isinstance(doc.get(name), str):
            known[name] = doc[name][:200]
    if isinstance(doc.get("alignment_flagged"), bool):
        known["alignment_flagged"] = doc["alignment_flagged"]
    try:
        labels = _LABELS.validate_python(doc.get("labels", {}))
        if len(json.dumps(labels)) <= labels_max_bytes:
            known["labels"] = labels
    except (ValidationError, TypeError, ValueError):
        pass
    try:
        if "produced_at" in doc:
            known["produced_at"] = _MOMENT.validate_python(doc["produced_at"])
    except ValidationError:
        pass
    return known


def dead_letter_verdict(
    dlq: DLQRecord, value: bytes | None, labels_max_bytes: int = VERDICT_LABELS_MAX_BYTES
) -> VerdictRecord | None:
    """The ``dead_lettered`` verdict for a DLQ record, or None when it gets none (module docstring).

    ``value``: the original message when it is small enough to read (its ids, labels and
    alignment flag are taken from it where it has them), else None.
    """
    if dlq.topic not in RESULT_PATH_TOPICS or dlq.reason in NO_VERDICT_REASONS or not dlq.result_id:
        return None
    known = _known_fields(value, labels_max_bytes)
    try:
        return VerdictRecord(
            result_id=dlq.result_id,
            outcome="dead_lettered",
            stage=dlq.stage,
            reason=dlq.reason,
            error=dlq.error[:VERDICT_ERROR_MAX_CHARS],
            **known,
        )
    except ValidationError:  # the id is not a valid result id: no consumer could look it up
        return None
