"""``lithowatch library reembed``: the reference library re-embedded by a new model, beside the old one.

Blue/green: the entries of the library now served (``--from-topic``, the base library topic
by default) are embedded again by the new model from their stored images (inline, or in the
blob store) and published to the new model's own library topic
(:func:`shared.index.library_topic`, created compacted), while the old library keeps serving.
The novelty service can then hold both (deploy/RUNBOOK.md, "Model rollout").

Nothing is dropped silently: an entry that cannot be re-embedded (its images missing from the
blob store or damaged, no scale for a model with a canonical one, of another model than the
library's) is *left out* with its reason, listed on the terminal and written to a JSON-lines
file, and the command exits 1 so a script notices.

Running it again brings the new library up to date (a sync, not a rebuild): entries whose
images the new library already holds with the new model are not embedded again (only their
status, labels or alert are republished when those changed), entries dropped from the old
library since (tombstones) are dropped from the new one, and entries the novelty service
added to the new library itself are left alone. Memory stays bounded by one batch of images
beside the two libraries' records.

The thresholds for the new model come from the existing calibration (``lithowatch
calibrate``) on a labelled data set: ``--calibrate DATASET`` runs it with the new model and
writes a new thresholds file (``--thresholds-out``); without it the command prints the
calibrate command to run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError
from tqdm import tqdm

from shared.blobstore import LocalBlobStore
from shared.contracts import ImageRef, LibraryEntry, Topics, Vector
from shared.errors import ConfigError, DependencyUnavailable, InputError
from shared.imageref import ImageLoader
from shared.index import library_topic
from shared.kafka_io import make_admin, make_producer, read_to_end
from shared.settings import CommonSettings

if TYPE_CHECKING:
    from shared.model import Encoder

BATCH_SIZE_DEFAULT = 64
LEFT_OUT_SHOWN = 20


@dataclass(frozen=True)
class LeftOut:
    """An entry of the old library not in the new one, and why."""

    entry_id: str
    reason: str
    detail: str


@dataclass(frozen=True)
class LibraryRecords:
    """A library topic read to its end: the live entry per id, and the ids whose last record is a
    tombstone (dropped)."""

    entries: dict[str, LibraryEntry]
    dropped: set[str]


@dataclass
class ReembedPlan:
    """What a re-embedding does to the new library."""

    embed: list[LibraryEntry] = field(default_factory=list)
    """Old entries to embed again (their images are not in the new library yet)."""
    republish: list[LibraryEntry] = field(default_factory=list)
    """New-model entries to publish as they are (metadata changed, or already of the new model)."""
    unchanged: int = 0
    drop: list[str] = field(default_factory=list)
    """Ids dropped from the old library since: tombstoned in the new one too."""
    left_out: list[LeftOut] = field(default_factory=list)


@dataclass
class ReembedReport:
    source_topic: str
    target_topic: str
    source_model: str
    model_version: str
    dim: int
    source_entries: int
    embedded: int = 0
    republished: int = 0
    unchanged: int = 0
    dropped: int = 0
    left_out: list[LeftOut] = field(default_factory=list)
    seconds: float = 0.0

    def reasons(self) -> dict[str, int]:
        return dict(Counter(item.reason for item in self.left_out))


def read_library_records(
    settings: CommonSettings, topic: str, timeout_seconds: float = 120.0
) -> LibraryRecords:
    """The last record per key of a library topic (a tombstone or ``op="delete"`` drops the entry)."""
    entries: dict[str, LibraryEntry] = {}
    dropped: set[str] = set()
    for record in read_to_end(settings, topic, timeout_seconds):
        key = (record.key or b"").decode(errors="replace")
        if record.value is None:
            entries.pop(key, None)
            dropped.add(key)
            continue
        try:
            entry = LibraryEntry.from_wire(record.value)
        except (ValidationError, ValueError):
            continue  # the novelty service refuses it the same way
        if entry.op == "delete":
            entries.pop(entry.entry_id, None)
            dropped.add(entry.entry_id)
        else:
            entries[entry.entry_id] = entry
            dropped.discard(entry.entry_id)
    return LibraryRecords(entries, dropped)


def library_model(entries: Iterable[LibraryEntry]) -> str:
    """The model most entries of a library are of."""
    counts = Counter(entry.model_version for entry in entries)
    if not counts:
        raise ConfigError("the library to re-embed holds no entries")
    return counts.most_common(1)[0][0]


def _same_images(a: LibraryEntry, b: LibraryEntry) -> bool:
    return (
        a.mask is not None
        and b.mask is not None
        and a.simulated is not None
        and b.simulated is not None
        and a.mask.sha256 == b.mask.sha256
        and a.simulated.sha256 == b.simulated.sha256
    )


_METADATA = ("status", "labels", "alert_id", "hashes", "nm_per_px", "mask", "simulated")


def plan_reembed(
    source: LibraryRecords, target: LibraryRecords, source_model: str, model_version: str
) -> ReembedPlan:
    """What to embed, republish and drop so the new library holds every old entry (pure)."""
    plan = ReembedPlan()
    for entry_id, entry in sorted(source.entries.items()):
        held = target.entries.get(entry_id)
        if entry.model_version == model_version:  # already of the new model: carried as it is
            if held is None or held.model_dump(exclude={"created_at"}) != entry.model_dump(
                exclude={"created_at"}
            ):
                plan.republish.append(entry)
            else:
                plan.unchanged += 1
            continue
        if entry.model_version != source_model:
            plan.left_out.append(
                LeftOut(
                    entry_id,
                    "other_model",
                    f"of model {entry.model_version}, the library is of {source_model}",
                )
            )
            continue
        if entry.mask is None or entry.simulated is None:
            plan.left_out.append(
                LeftOut(entry_id, "no_images", "the entry carries no mask and print to embed")
            )
            continue
        if held is not None and held.model_version == model_version and _same_images(entry, held):
            if all(getattr(held, name) == getattr(entry, name) for name in _METADATA):
                plan.unchanged += 1
            else:
                plan.republish.append(
                    held.model_copy(update={name: getattr(entry, name) for name in _METADATA})
                )
            continue
        plan.embed.append(entry)
    plan.drop = sorted(entry_id for entry_id in source.dropped if entry_id in target.entries)
    return plan


def reembed_entries(
    entries: Sequence[LibraryEntry],
    encoder: Encoder,
    load: Callable[[ImageRef], np.ndarray],
    left_out: list[LeftOut],
    batch_size: int = BATCH_SIZE_DEFAULT,
    default_nm_per_px: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[LibraryEntry]:
    """Each entry again, with the new model's vector, a batch at a time; those that cannot be
    embedded are appended to ``left_out`` (with the reason) instead."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    canonical = encoder.nm_per_px is not None
    for start in range(0, len(entries), batch_size):
        chunk = entries[start : start + batch_size]
        ready: list[LibraryEntry] = []
        masks: list[np.ndarray] = []
        prints: list[np.ndarray] = []
        scales: list[float] = []
        for entry in chunk:
            scale = entry.nm_per_px if entry.nm_per_px is not None else default_nm_per_px
            if canonical and scale is None:
                left_out.append(
                    LeftOut(entry.entry_id, "no_scale", "the model has a canonical scale; give --nm-per-px")
                )
                continue
            assert entry.mask is not None and entry.simulated is not None  # plan_reembed checked
            try:
                mask, printed = load(entry.mask), load(entry.simulated)
                encoder_check(encoder, mask, printed, scale)
            except InputError as exc:
                left_out.append(LeftOut(entry.entry_id, exc.reason or "image", str(exc)))
                continue
            ready.append(entry)
            masks.append(mask)
            prints.append(printed)
            scales.append(scale if scale is not None else 0.0)
        if ready:
            vectors = encoder.embed(masks, prints, scales if canonical else None)
            for entry, vector in zip(ready, vectors, strict=True):
                yield entry.model_copy(
                    update={"vector": Vector.from_array(vector), "model_version": encoder.model_version}
                )
        if progress is not None:
            progress(len(chunk))


def encoder_check(encoder: Encoder, mask: np.ndarray, printed: np.ndarray, scale: float | None) -> None:
    """ImageError when the model cannot take this pair at this scale (the entry is left out)."""
    from shared.model.preprocess import check_pair, scaled_shape

    check_pair(mask, printed)
    if encoder.nm_per_px is not None:
        scaled_shape(mask.shape, scale, encoder.nm_per_px, encoder.input_size)


def ensure_library_topic(settings: CommonSettings, topic: str) -> bool:
    """Create ``topic`` as a library topic (compacted, one partition) unless it exists; True if made."""
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    admin = make_admin(settings)
    try:
        if topic in set(admin.list_topics()):
            return False
        try:
            admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
        except TopicAlreadyExistsError:
            return False
        return True
    except KafkaError as exc:
        raise DependencyUnavailable(f"cannot create library topic {topic}: {exc}") from exc
    finally:
        admin.close()


class Publisher:
    """Publishes library records as they come (keyed by entry id; a drop is a tombstone) and checks
    every acknowledgement at the end."""

    def __init__(self, settings: CommonSettings, topic: str) -> None:
        self.topic = topic
        self.producer = make_producer(settings, client_id="lithowatch-library-reembed")
        self.futures: list[Any] = []

    def send(self, entry: LibraryEntry) -> None:
        self.futures.append(
            self.producer.send(
                self.topic, key=entry.entry_id.encode(), value=entry.model_dump_json().encode()
            )
        )

    def drop(self, entry_id: str) -> None:
        self.futures.append(self.producer.send(self.topic, key=entry_id.encode(), value=None))

    def finish(self) -> int:
        self.producer.flush(timeout=120)
        for future in self.futures:
            future.get(timeout=60)
        return len(self.futures)

    def close(self) -> None:
        self.producer.close(timeout=5)


def run_reembed(
    settings: CommonSettings,
    encoder: Encoder,
    source_topic: str = Topics.LIBRARY,
    target_topic: str | None = None,
    source_model: str | None = None,
    batch_size: int = BATCH_SIZE_DEFAULT,
    default_nm_per_px: float | None = None,
    progress: bool = True,
) -> ReembedReport:
    """Re-embed the library on ``source_topic`` into the new model's library topic (see the module)."""
    began = time.perf_counter()
    target_topic = target_topic or library_topic(encoder.model_version)
    if target_topic == source_topic:
        raise ConfigError(f"the new library must go to another topic than the old one ({source_topic})")
    source = read_library_records(settings, source_topic)
    if not source.entries:
        raise ConfigError(f"library topic {source_topic} holds no entries to re-embed")
    source_model = source_model or library_model(
        e for e in source.entries.values() if e.model_version != encoder.model_version
    )
    if source_model == encoder.model_version:
        raise ConfigError(f"the library on {source_topic} is already of model {encoder.model_version}")
    ensure_library_topic(settings, target_topic)
    target = read_library_records(settings, target_topic)
    plan = plan_reembed(source, target, source_model, encoder.model_version)
    report = ReembedReport(
        source_topic,
        target_topic,
        source_model,
        encoder.model_version,
        encoder.dim,
        len(source.entries),
        unchanged=plan.unchanged,
        left_out=plan.left_out,
    )
    loader = ImageLoader(LocalBlobStore(settings.blob_root), settings.max_image_pixels)
    publisher = Publisher(settings, target_topic)
    try:
        with tqdm(total=len(plan.embed), desc="re-embedding", unit="entry", disable=not progress) as bar:
            for entry in reembed_entries(
                plan.embed, encoder, loader, report.left_out, batch_size, default_nm_per_px, bar.update
            ):
                publisher.send(entry)
                report.embedded += 1
        for entry in plan.republish:
            publisher.send(entry)
            report.republished += 1
        for entry_id in plan.drop:
            publisher.drop(entry_id)
            report.dropped += 1
        publisher.finish()
    finally:
        publisher.close()
    report.seconds = time.perf_counter() - began
    return report


def write_left_out(path: Path, left_out: Sequence[LeftOut]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for item in left_out:
            out.write(
                json.dumps({"entry_id": item.entry_id, "reason": item.reason, "detail": item.detail}) + "\n"
            )
