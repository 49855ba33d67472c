"""``lithowatch dedupe DIR``: groups of duplicates in a folder, as the dedupe service would find them.

The results go, in folder order and in batches, through the dedupe service's own core
(:class:`services.dedupe.core.DedupeCore`: exact digest, shift-robust spectral hash of the mask,
band lookup, then the pixel check :func:`shared.verification.verify_shifted_match`) over the
in-memory store, which runs the Redis store's decision logic. So a result is a duplicate here
exactly when the stream would have called it one, had the folder been replayed into it in this
order (``lithowatch simfarm --dataset DIR``) with the same settings (``LITHOWATCH_DEDUPE_*``).

A group is a kept result (the first of its kind: the stream's unique one) and every result
judged a duplicate of it, directly or through another duplicate (an exact copy of a
duplicate names that duplicate as ``duplicate_of``), each with the method (``exact`` or
``perceptual``), the distance (normalised Hamming distance of the hashes; 0 for exact) and the
measured details (window shift, mismatching pixels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tqdm import tqdm

from app.offline.inputs import Folder, Skipped, batches, read_results
from services.dedupe.core import DedupeCore, DedupeSettings
from services.dedupe.store_memory import InMemoryDedupeStore
from shared.contracts import DuplicateRecord, LabelValue, SimResult
from shared.dataset import DatasetItem
from shared.errors import InputError
from shared.imageref import ImageLoader


@dataclass(frozen=True)
class Member:
    """One result of a group: the kept one (no method) or a duplicate."""

    id: str
    files: tuple[str, ...]
    labels: dict[str, LabelValue]
    item: DatasetItem
    duplicate: DuplicateRecord | None = None

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"id": self.id, "files": list(self.files), "labels": self.labels}
        if self.duplicate is not None:
            found.update(
                duplicate_of=self.duplicate.duplicate_of,
                method=self.duplicate.method,
                distance=round(self.duplicate.distance, 6),
                details=self.duplicate.details,
            )
        return found


@dataclass
class Group:
    kept: Member
    duplicates: list[Member] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"kept": self.kept.as_json(), "duplicates": [d.as_json() for d in self.duplicates]}


@dataclass
class DedupeReport:
    """What ``dedupe`` found: every group with duplicates, the counts and the skipped results."""

    folder: Folder
    settings: DedupeSettings
    results: int
    unique: int
    groups: list[Group]
    skipped: list[Skipped]

    @property
    def duplicates(self) -> int:
        return sum(len(g.duplicates) for g in self.groups)

    def as_json(self) -> dict[str, Any]:
        return {
            "command": "dedupe",
            "source": self.folder.describe(),
            "settings": self.settings.model_dump(mode="json"),
            "counts": {
                "results": self.results,
                "unique": self.unique,
                "duplicates": self.duplicates,
                "groups": len(self.groups),
                "skipped": len(self.skipped),
            },
            "groups": [g.as_json() for g in self.groups],
            "skipped": [s.as_json() for s in self.skipped],
        }

    def summary(self) -> str:
        return (f"{self.results} results: {self.unique} unique, {self.duplicates} duplicates in "
                f"{len(self.groups)} groups, {len(self.skipped)} skipped")


def group_duplicates(order: Sequence[str], duplicates: dict[str, DuplicateRecord]) -> dict[str, list[str]]:
    """Kept result id -> its duplicates (folder order), following chains of ``duplicate_of``."""

    def root(result_id: str) -> str:
        seen: set[str] = set()
        while result_id in duplicates and result_id not in seen:
            seen.add(result_id)
            result_id = duplicates[result_id].duplicate_of
        return result_id

    groups: dict[str, list[str]] = {}
    for result_id in order:
        if result_id in duplicates:
            groups.setdefault(root(result_id), []).append(result_id)
    return groups


def find_duplicates(
    folder: Folder,
    settings: DedupeSettings,
    *,
    band_max_members: int,
    max_image_pixels: int,
    batch_size: int = 64,
    progress: bool = True,
    on_skipped: Callable[[Skipped], None] = lambda skipped: None,
) -> DedupeReport:
    """Run the folder through the dedupe core, in order, and group the duplicates."""
    store = InMemoryDedupeStore(settings.ttl_seconds, band_max_members=band_max_members)
    core = DedupeCore(store, settings, load_image=ImageLoader(None, max_image_pixels))
    members: dict[str, Member] = {}
    order: list[str] = []
    duplicates: dict[str, DuplicateRecord] = {}
    skipped: list[Skipped] = []
    unique = 0

    def skip(entry: Skipped) -> None:
        skipped.append(entry)
        on_skipped(entry)

    items = folder.dataset.items
    with tqdm(total=len(items), desc="dedupe", unit="result", disable=not progress) as bar:
        for chunk in batches(items, batch_size):
            ready: list[tuple[DatasetItem, SimResult]] = []
            for item, result in read_results(folder, chunk):
                if isinstance(result, Skipped):
                    skip(result)
                else:
                    ready.append((item, result))
            decisions = core.decide_batch([result for _, result in ready])
            for (item, result), decision in zip(ready, decisions, strict=True):
                outcome = decision.outcome
                files = folder.files_of(item)
                if isinstance(outcome, InputError):
                    skip(Skipped(result.result_id, files, outcome.reason, str(outcome)))
                    continue
                order.append(result.result_id)
                duplicate = outcome if isinstance(outcome, DuplicateRecord) else None
                members[result.result_id] = Member(result.result_id, files, dict(result.labels), item,
                                                   duplicate)
                if duplicate is not None:
                    duplicates[result.result_id] = duplicate
                else:
                    unique += 1
                for late in decision.late:  # an earlier result this one shows to be a window of its layout
                    earlier = members.get(late.record.result_id)
                    if earlier is not None and earlier.duplicate is None:
                        members[earlier.id] = replace(earlier, duplicate=late.record)
                        duplicates[earlier.id] = late.record
                        unique -= 1
            bar.update(len(chunk))
    groups = [
        Group(members[kept], [members[d] for d in found])
        for kept, found in group_duplicates(order, duplicates).items()
        if kept in members
    ]
    position = {result_id: i for i, result_id in enumerate(order)}
    groups.sort(key=lambda g: position[g.kept.id])
    return DedupeReport(folder, settings, len(order), unique, groups, skipped)
