"""Explain stage: render each alert beside its nearest neighbours and publish the panel's URI.

Also keeps the most recent explanations for the read-only alerts page that
Grafana links to (``/alerts`` on the service's metrics port). The page is served
from the HTTP server's threads while the consumer thread adds alerts: the recent
alerts are read only as a copy taken under their lock.
"""

from __future__ import annotations

import html
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from services.explain.render import KNOWN_BGR, NOVEL_BGR, Tile, encode_panel_png, label_line, render_panel
from shared.blobstore import LocalBlobStore
from shared.contracts import AlertRecord, ExplanationRecord, ImageRef, Topics
from shared.errors import InputError
from shared.imaging import sha256_hex
from shared.runtime import ItemResult, Output


@dataclass(frozen=True)
class RecentAlert:
    alert: AlertRecord
    panel_uri: str


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
    name = "explain"
    input_topic = Topics.ALERTS
    input_model = AlertRecord

    def __init__(
        self,
        load: Callable[[ImageRef], np.ndarray],
        store: LocalBlobStore,
        max_neighbours: int = 3,
        keep_recent: int = 200,
    ) -> None:
        self.load = load
        self.store = store
        self.max_neighbours = max_neighbours
        self._recent: deque[RecentAlert] = deque(maxlen=keep_recent)
        self._recent_lock = threading.Lock()

    def explain(self, alert: AlertRecord) -> ExplanationRecord:
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
        self.remember(RecentAlert(alert, uri))
        return ExplanationRecord(
            alert_id=alert.alert_id,
            result_id=alert.result_id,
            panel=panel,
            neighbour_ids=[n.id for n in alert.neighbours],
            summary=summary,
            produced_at=alert.produced_at,
        )

    def process_batch(self, items: Sequence[AlertRecord]) -> list[ItemResult]:
        results: list[ItemResult] = []
        for alert in items:
            try:
                record = self.explain(alert)
            except InputError as exc:
                results.append(exc)
                continue
            results.append([Output(Topics.EXPLANATIONS, record, alert.result_id)])
        return results

    # ---- the read-only page --------------------------------------------------------------
    def remember(self, recent: RecentAlert) -> None:
        """Add an explained alert to the page (the oldest beyond ``keep_recent`` leaves it)."""
        with self._recent_lock:
            self._recent.appendleft(recent)

    def recent_alerts(self) -> list[RecentAlert]:
        """The recent alerts, newest first: a copy, safe to iterate while alerts are added."""
        with self._recent_lock:
            return list(self._recent)

    def alerts_page(self, _path: str = "/alerts") -> tuple[int, str, bytes]:
        rows = []
        for recent in self.recent_alerts():
            alert = recent.alert
            key = recent.panel_uri.removeprefix("blob://")
            neighbours = ", ".join(f"{html.escape(n.id)} ({n.similarity:.3f})" for n in alert.neighbours[:3])
            rows.append(
                f"<tr id='{html.escape(alert.alert_id)}'><td>{alert.raised_at:%Y-%m-%d %H:%M:%S}</td>"
                f"<td>{html.escape(alert.result_id)}</td><td>{alert.novelty_score:.3f}</td>"
                f"<td>{html.escape(str(alert.labels.get('family', '')))}</td><td>{neighbours}</td>"
                f"<td><a href='/panels/{html.escape(key)}'>"
                f"<img src='/panels/{html.escape(key)}' height='90'></a></td></tr>"
            )
        body = PAGE.format(
            count=len(rows), rows="\n".join(rows) or "<tr><td colspan=6>no alerts yet</td></tr>"
        )
        return 200, "text/html; charset=utf-8", body.encode()

    def panel_page(self, path: str) -> tuple[int, str, bytes]:
        key = path.removeprefix("/panels/")
        if not key.endswith(".png"):
            return 404, "text/plain", b"not found\n"
        try:
            return 200, "image/png", self.store.get(f"blob://{key}")
        except InputError:
            return 404, "text/plain", b"not found\n"


def png_width(png: bytes) -> int:
    return int.from_bytes(png[16:20], "big")


def png_height(png: bytes) -> int:
    return int.from_bytes(png[20:24], "big")


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>lithowatch alerts</title>
<meta http-equiv="refresh" content="10">
<style>body{{font-family:sans-serif;margin:1em}}td{{padding:4px 8px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>lithowatch: recent novelty alerts ({count})</h1>
<table><tr><th>raised</th><th>result</th><th>novelty</th><th>family</th><th>nearest known</th>
<th>panel</th></tr>
{rows}
</table></body></html>
"""
