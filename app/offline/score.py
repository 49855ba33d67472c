"""``lithowatch score DIR --library LIB``: the novelty of every result in a folder, as the stream scores it.

Each result takes the stream's path through the services' own cores, in folder order and in
batches: the dedupe core's hashes (:meth:`services.dedupe.core.DedupeCore.prepare`), registration
of the print onto its mask (:class:`services.align.core.AlignCore`, ``LITHOWATCH_ALIGN_*``), the
encoder (:class:`services.embed.core.EmbedCore`: the shipped model unless another is given) and
the novelty core (:class:`services.novelty.core.NoveltyCore`) against the library, with the
thresholds the novelty service would apply (:class:`services.novelty.thresholds.ThresholdsWatcher`).

Unlike the stream, every result is scored, duplicates included (finding those is ``dedupe``),
and hybrid duplicate confirmation is not run. As in the stream (``LITHOWATCH_NOVELTY_PROVISIONAL``,
on by default) a novel result joins the library as a provisional entry, so a later result of the
same new kind is ``provisional`` (``provisional_of`` names the first one's alert) rather than a
second ``novel``; ``--no-provisional`` judges every result against the library alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from app.offline.inputs import Folder, Skipped, batches, read_results
from app.offline.library import OfflineLibrary
from services.align.core import AlignCore
from services.dedupe.core import DedupeCore
from services.dedupe.store_memory import InMemoryDedupeStore
from services.embed.core import EmbedCore
from services.explain.core import alert_tiles
from services.explain.render import encode_panel_png, render_panel
from services.novelty.core import NoveltyCore, Scored
from services.novelty.thresholds import ThresholdsWatcher
from shared.contracts import (
    AlertRecord,
    AlignedResult,
    DuplicateRecord,
    EmbeddedResult,
    ImageRef,
    LabelValue,
    ScoreRecord,
    UniqueResult,
    Vector,
)
from shared.dataset import DatasetItem
from shared.errors import ConfigError, InputError
from shared.imageref import ImageLoader


def _number(value: float) -> float:
    """Six decimals, and no negative zero (a score of -1e-9 from rounding reads 0)."""
    return round(value, 6) + 0.0


CSV_COLUMNS = (
    "result_id", "files", "novelty_score", "threshold", "decision", "cluster", "provisional_of",
    "alignment_flagged", "alignment_reason", "nearest_id", "nearest_similarity", "neighbours",
    "skipped_reason",
)


@dataclass(frozen=True)
class Row:
    """One result: its score record (the novelty service's own), or why it was skipped."""

    id: str
    files: tuple[str, ...]
    labels: dict[str, LabelValue]
    score: ScoreRecord | None = None
    alignment_flagged: bool = False
    alignment_reason: str = ""
    panel: str | None = None
    skipped: Skipped | None = None

    def as_json(self) -> dict[str, Any]:
        if self.score is None:
            assert self.skipped is not None
            return self.skipped.as_json()
        s = self.score
        return {
            "result_id": self.id,
            "files": list(self.files),
            "labels": self.labels,
            "novelty_score": _number(s.novelty_score),
            "threshold": _number(s.threshold),
            "decision": s.decision,
            "cluster": s.cluster,
            "provisional_of": s.provisional_of,
            "alignment": {"flagged": self.alignment_flagged, "reason": self.alignment_reason},
            "neighbours": [
                {"id": n.id, "similarity": _number(n.similarity), "provisional": n.provisional,
                 "labels": n.labels}
                for n in s.neighbours
            ],
            "panel": self.panel,
        }

    def as_csv(self) -> dict[str, Any]:
        row: dict[str, Any] = {"result_id": self.id, "files": ";".join(self.files)}
        if self.score is None:
            assert self.skipped is not None
            row.update(decision="skipped", skipped_reason=f"{self.skipped.reason}: {self.skipped.message}")
            return row
        s = self.score
        nearest = s.neighbours[0] if s.neighbours else None
        row.update(
            novelty_score=f"{_number(s.novelty_score):.6f}",
            threshold=f"{_number(s.threshold):.6f}",
            decision=s.decision,
            cluster="" if s.cluster is None else s.cluster,
            provisional_of=s.provisional_of or "",
            alignment_flagged=str(self.alignment_flagged).lower(),
            alignment_reason=self.alignment_reason,
            nearest_id=nearest.id if nearest else "",
            nearest_similarity=f"{_number(nearest.similarity):.6f}" if nearest else "",
            neighbours=";".join(f"{n.id}@{n.similarity:.4f}" for n in s.neighbours),
        )
        return row


@dataclass
class ScoreReport:
    folder: Folder
    library: OfflineLibrary
    model: dict[str, Any]
    thresholds: dict[str, Any]
    rows: list[Row] = field(default_factory=list)

    def count(self, decision: str) -> int:
        return sum(1 for r in self.rows if r.score is not None and r.score.decision == decision)

    @property
    def skipped(self) -> list[Skipped]:
        return [r.skipped for r in self.rows if r.skipped is not None]

    def as_json(self) -> dict[str, Any]:
        scored = [r for r in self.rows if r.score is not None]
        return {
            "command": "score",
            "source": self.folder.describe(),
            "library": self.library.describe(),
            "model": self.model,
            "thresholds": self.thresholds,
            "counts": {
                "results": len(self.rows),
                "scored": len(scored),
                "known": self.count("known"),
                "novel": self.count("novel"),
                "provisional": self.count("provisional"),
                "skipped": len(self.skipped),
            },
            "results": [r.as_json() for r in scored],
            "skipped": [s.as_json() for s in self.skipped],
        }

    def summary(self) -> str:
        return (f"{len(self.rows)} results against {self.library.reference_count} library entries: "
                f"{self.count('known')} known, {self.count('novel')} novel, "
                f"{self.count('provisional')} provisional, {len(self.skipped)} skipped")


class FolderScorer:
    """The stream's align, embed and novelty cores, run over a folder in batches."""

    def __init__(self, library: OfflineLibrary, watcher: ThresholdsWatcher, novelty: NoveltyCore,
                 align: AlignCore, embed: EmbedCore, max_image_pixels: int,
                 panel_loader: Callable[[ImageRef], np.ndarray] | None = None,
                 max_neighbours_shown: int = 3) -> None:
        self.library = library
        self.watcher = watcher
        self.novelty = novelty
        self.align = align
        self.embed = embed
        self.load = ImageLoader(None, max_image_pixels)
        self.hashes = DedupeCore(InMemoryDedupeStore(), load_image=self.load)
        self.panel_loader = panel_loader or self.load
        self.max_neighbours_shown = max_neighbours_shown
        self._library_offset = library.state.next_offsets.get(0, 0)

    def _embedded(self, aligned: Sequence[AlignedResult]) -> list[EmbeddedResult | InputError]:
        """The embed stage's work: decode each pair, check it, embed the good ones in one batch."""
        out: list[EmbeddedResult | InputError | None] = [None] * len(aligned)
        pairs: list[tuple[np.ndarray, np.ndarray]] = []
        positions: list[int] = []
        for i, item in enumerate(aligned):
            try:
                mask, warped = self.load(item.mask), self.load(item.aligned_simulated)
                self.embed.validate_item(mask, warped, item.nm_per_px)
            except InputError as exc:
                out[i] = exc
                continue
            pairs.append((mask, warped))
            positions.append(i)
        vectors = self.embed.embed_batch(pairs, [aligned[i].nm_per_px for i in positions])
        for row, i in enumerate(positions):
            out[i] = EmbeddedResult(
                **aligned[i].model_dump(exclude={"schema_version"}),
                embedding=Vector.from_array(vectors[row]),
                model_version=self.embed.model_version,
            )
        return [o if o is not None else InputError("not embedded") for o in out]

    def _file_provisional(self, scored: Scored) -> None:
        """What the library feed does with a novel result's provisional entry: apply it."""
        entry = scored.provisional_entry
        if entry is None:
            return
        self.library.state.apply(entry, 0, self._library_offset)
        self._library_offset += 1
        self.novelty.pending.forget(entry.entry_id)

    def _panel(self, alert: AlertRecord, panels: Path) -> str:
        neighbours = [self.library.with_image(n) for n in alert.neighbours]
        alert = alert.model_copy(update={"neighbours": neighbours})
        tiles = alert_tiles(alert, self.panel_loader, self.max_neighbours_shown)
        panel = render_panel(tiles, f"alert {alert.alert_id}  result {alert.result_id}  "
                                    f"novelty {alert.novelty_score:.3f}")
        path = panels / f"{alert.result_id}.png"
        try:
            path.write_bytes(encode_panel_png(panel))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot write the panel ({exc.strerror or exc})") from exc
        return str(path)

    def _batch(self, folder: Folder, chunk: Sequence[DatasetItem], panels: Path | None) -> list[Row]:
        rows: dict[str, Row] = {}
        order = [item.id for item in chunk]
        files = {item.id: folder.files_of(item) for item in chunk}
        uniques: list[UniqueResult] = []
        for item, result in read_results(folder, chunk):
            if isinstance(result, Skipped):
                rows[item.id] = Row(item.id, result.files, dict(item.labels), skipped=result)
                continue
            try:
                hashes = self.hashes.prepare(result).hashes
            except InputError as exc:
                rows[item.id] = Row(item.id, files[item.id], dict(item.labels),
                                    skipped=Skipped(item.id, files[item.id], exc.reason, str(exc)))
                continue
            uniques.append(UniqueResult(**dict(result), hashes=hashes))
        aligned: list[AlignedResult] = []
        for unique, outcome in zip(uniques, self.align.process_batch(uniques), strict=True):
            if isinstance(outcome, InputError):
                rows[unique.result_id] = self._skipped(unique.result_id, files, unique.labels, outcome)
            else:
                aligned.append(outcome)
        embedded: list[EmbeddedResult] = []
        for registered, done in zip(aligned, self._embedded(aligned), strict=True):
            if isinstance(done, InputError):
                rid = registered.result_id
                rows[rid] = self._skipped(rid, files, registered.labels, done)
            else:
                embedded.append(done)
        for result, verdict in zip(embedded, self.novelty.process_batch(embedded), strict=True):
            rid = result.result_id
            if isinstance(verdict, InputError):
                rows[rid] = self._skipped(rid, files, result.labels, verdict)
                continue
            if isinstance(verdict, DuplicateRecord):  # hybrid confirmation is not run offline
                raise AssertionError("the offline novelty core confirms no duplicates")
            self._file_provisional(verdict)
            panel = self._panel(verdict.alert, panels) if panels is not None and verdict.alert else None
            rows[rid] = Row(rid, files[rid], dict(result.labels), verdict.score,
                            result.alignment_flagged, result.alignment_reason, panel)
        return [rows[result_id] for result_id in order]

    @staticmethod
    def _skipped(result_id: str, files: dict[str, tuple[str, ...]], labels: dict[str, LabelValue],
                 error: InputError) -> Row:
        return Row(result_id, files[result_id], dict(labels),
                   skipped=Skipped(result_id, files[result_id], error.reason, str(error)))

    def score_folder(self, folder: Folder, report: ScoreReport, *, batch_size: int = 32,
                     panels: Path | None = None, progress: bool = True,
                     on_skipped: Callable[[Skipped], None] = lambda skipped: None) -> ScoreReport:
        if panels is not None:
            try:
                panels.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"{panels}: cannot make the panels folder ({exc.strerror or exc})") from exc
        items = folder.dataset.items
        with tqdm(total=len(items), desc="score", unit="result", disable=not progress) as bar:
            for chunk in batches(items, batch_size):
                for row in self._batch(folder, chunk, panels):
                    report.rows.append(row)
                    if row.skipped is not None:
                        on_skipped(row.skipped)
                bar.update(len(chunk))
        return report
