"""The explain stage's pure core: render each alert beside its nearest neighbours, store the panel.

Per alert the outcome is an :class:`ExplanationRecord` (the panel stored in the blob
store, referenced by URI) or the :class:`InputError` that rejects the alert (its own
images cannot be read; a missing neighbour image only leaves its tile empty). The
stage adapter (:mod:`services.explain.stage`) publishes the records and hands each
explained alert to the read-only pages (:mod:`services.explain.routes`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from services.explain.render import KNOWN_BGR, NOVEL_BGR, Tile, encode_panel_png, label_line, render_panel
from shared.blobstore import BlobStore
from shared.contracts import AlertRecord, ExplanationRecord, ImageRef
from shared.errors import InputError
from shared.imaging import sha256_hex

Outcome = ExplanationRecord | InputError


def alert_tiles(
    alert: AlertRecord, load: Callable[[ImageRef], np.ndarray], max_neighbours: int
) -> list[Tile]:
    tiles = [
        Tile(load(alert.mask), "mask", [f"result {alert.result_id}"[:30]], NOVEL_BGR),
        Tile(
            load(alert.simulated),
            "print (novel)",
            [f"score {alert.novelty_score:.3f} > {alert.threshold:.3f}", *label_line(dict(alert.labels))],
            NOVEL_BGR,
        ),
    ]
    for rank, neighbour in enumerate(alert.neighbours[:max_neighbours], start=1):
        image = None
        if neighbour.simulated is not None:
            try:
                image = load(neighbour.simulated)
            except InputError:
                image = None  # a missing neighbour image must not lose the explanation
        status = " (provisional)" if neighbour.provisional else ""
        tiles.append(
            Tile(
                image,
                f"#{rank} sim {neighbour.similarity:.3f}{status}",
                [neighbour.id[:30], *label_line(dict(neighbour.labels))],
                KNOWN_BGR,
            )
        )
    return tiles


class ExplainCore:
    """Explanation panels of alerts, stored in a blob store."""

    def __init__(
        self, load: Callable[[ImageRef], np.ndarray], store: BlobStore, max_neighbours: int = 3
    ) -> None:
        self.load = load
        self.store = store
        self.max_neighbours = max_neighbours

    def explain(self, alert: AlertRecord) -> ExplanationRecord:
        """The alert's panel, rendered and stored; InputError when the alert's own images are bad."""
        tiles = alert_tiles(alert, self.load, self.max_neighbours)
        title = f"alert {alert.alert_id}  result {alert.result_id}  novelty {alert.novelty_score:.3f}"
        png = encode_panel_png(render_panel(tiles, title))
        digest = sha256_hex(png)
        uri = self.store.put(png, digest, "png")
        panel = ImageRef(
            format="png",
            sha256=digest,
            shape=(int(png_height(png)), int(png_width(png))),
            dtype="uint8",
            uri=uri,
        )
        nearest = alert.neighbours[0] if alert.neighbours else None
        summary = f"novelty {alert.novelty_score:.3f} over threshold {alert.threshold:.3f}; " + (
            f"nearest {nearest.id} at similarity {nearest.similarity:.3f}" if nearest else "no neighbours"
        )
        return ExplanationRecord(
            alert_id=alert.alert_id,
            result_id=alert.result_id,
            panel=panel,
            neighbour_ids=[n.id for n in alert.neighbours],
            summary=summary,
            produced_at=alert.produced_at,
        )

    def process_batch(self, items: Sequence[AlertRecord]) -> list[Outcome]:
        """One outcome per alert, in order."""
        outcomes: list[Outcome] = []
        for alert in items:
            try:
                outcomes.append(self.explain(alert))
            except InputError as exc:
                outcomes.append(exc)
        return outcomes


def png_width(png: bytes) -> int:
    return int.from_bytes(png[16:20], "big")


def png_height(png: bytes) -> int:
    return int.from_bytes(png[20:24], "big")
