"""Reviewers' decisions as calibration labels (``lithowatch calibrate --feedback``).

``lithowatch library promote`` and ``drop`` record each decision on the feedback topic
(:class:`~shared.contracts.FeedbackRecord`: who, why, the entry's vector). Calibration reads
them back as labelled vectors, the latest decision per entry winning:

- **promoted** -> *known*: a reviewer put the result into the reference set, so a result like
  it is not news; it joins the known queries of the calibration split, and a threshold that
  alerts on it counts a false alarm;
- **dropped** -> *novel*: a reviewer kept the result out of the reference set (a pattern not to
  learn as normal, or noise), so a result like it should still raise an alert; it joins the
  novel queries, and a threshold that calls it known counts a miss.

Only decisions on vectors of the model being calibrated are used (others are counted as
skipped: a vector of another model means nothing in this embedding space). During a model
switch one entry id lives in two libraries, the old model's and the new one's (``library
reembed``), and each library is curated on its own (``library promote|drop --model VERSION``):
the latest decision per entry is taken *per model*, so a later decision on the old model's
entry does not hide the new model's decision from the new model's calibration.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from shared.contracts import FeedbackRecord
from shared.errors import ConfigError, ContractError
from shared.settings import CommonSettings

LABEL_OF_DECISION = {"promoted": "known", "dropped": "novel"}


@dataclass(frozen=True)
class FeedbackLabels:
    """Vectors labelled by reviewers: known (promoted) and novel (dropped), and what was left out."""

    known: np.ndarray
    novel: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    reviewers: tuple[str, ...] = ()

    def describe(self) -> dict[str, object]:
        return {
            "known_from_promoted": int(self.known.shape[0]),
            "novel_from_dropped": int(self.novel.shape[0]),
            "skipped": dict(self.skipped),
            "reviewers": list(self.reviewers),
        }


def parse_feedback_lines(lines: Iterable[bytes | str], source: str) -> list[FeedbackRecord]:
    """Feedback records, one JSON object a line (blank lines skipped); a bad line is a ConfigError."""
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(FeedbackRecord.from_wire(line))
        except ValidationError as exc:
            raise ConfigError(f"{source}:{number}: not a feedback record ({exc.errors()[0]['msg']})") from exc
    return records


def load_feedback(source: str, settings: CommonSettings | None = None) -> list[FeedbackRecord]:
    """Decisions from a JSON-lines file (an existing path) or else a topic (read from the start)."""
    path = Path(source)
    if path.is_file():
        with path.open("rb") as handle:
            return parse_feedback_lines(handle, str(path))
    from shared.kafka_io import read_to_end  # a broker only when a topic is named

    records = []
    for record in read_to_end(settings or CommonSettings(), source):
        if record.value is None:
            continue
        try:
            records.append(FeedbackRecord.from_wire(record.value))
        except ValidationError:
            continue  # a tolerant reader: what is not a decision is not a label
    return records


def feedback_labels(records: Sequence[FeedbackRecord], model_version: str, dim: int) -> FeedbackLabels:
    """The latest decision per entry of ``model_version`` as its labelled vectors."""
    latest: dict[tuple[str, str], FeedbackRecord] = {}
    for record in records:  # in topic (or file) order; a later decision replaces an earlier one
        latest[(record.model_version, record.entry_id)] = record
    skipped: dict[str, int] = {}
    vectors: dict[str, list[np.ndarray]] = {"known": [], "novel": []}
    reviewers: set[str] = set()
    for record in latest.values():
        if record.model_version != model_version:
            skipped["other_model"] = skipped.get("other_model", 0) + 1
            continue
        if record.vector is None:
            skipped["no_vector"] = skipped.get("no_vector", 0) + 1
            continue
        try:
            vector = record.vector.to_array()
        except ContractError:
            skipped["bad_vector"] = skipped.get("bad_vector", 0) + 1
            continue
        if vector.shape[0] != dim:
            raise ConfigError(
                f"feedback on {record.entry_id!r} holds a {vector.shape[0]}-d vector of model "
                f"{model_version!r}; the embeddings being calibrated are {dim}-d"
            )
        vectors[LABEL_OF_DECISION[record.decision]].append(vector)
        reviewers.add(record.by)

    def stack(rows: list[np.ndarray]) -> np.ndarray:
        return np.stack(rows).astype(np.float32) if rows else np.empty((0, dim), dtype=np.float32)

    return FeedbackLabels(stack(vectors["known"]), stack(vectors["novel"]), skipped, tuple(sorted(reviewers)))
