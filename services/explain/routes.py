"""The explain service's read-only pages, served on its metrics port.

``/alerts`` lists the most recent explained alerts (Grafana's alert links point here)
and ``/panels/<key>.png`` serves their panels from the blob store. The pages are served
from the HTTP server's threads while the consumer thread adds alerts: the recent alerts
are read only as a copy taken under their lock.
"""

from __future__ import annotations

import html
import threading
from collections import deque
from dataclasses import dataclass

from shared.blobstore import BlobStore
from shared.contracts import AlertRecord
from shared.errors import InputError
from shared.metrics import Route


@dataclass(frozen=True)
class RecentAlert:
    alert: AlertRecord
    panel_uri: str


class AlertPages:
    """The recent alerts (at most ``keep_recent``, newest first) and the pages that show them."""

    def __init__(self, store: BlobStore, keep_recent: int = 200) -> None:
        self.store = store
        self._recent: deque[RecentAlert] = deque(maxlen=keep_recent)
        self._recent_lock = threading.Lock()

    def routes(self) -> dict[str, Route]:
        return {"/alerts": self.alerts_page, "/panels/": self.panel_page}

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


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>lithowatch alerts</title>
<meta http-equiv="refresh" content="10">
<style>body{{font-family:sans-serif;margin:1em}}td{{padding:4px 8px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>lithowatch: recent novelty alerts ({count})</h1>
<table><tr><th>raised</th><th>result</th><th>novelty</th><th>family</th><th>nearest known</th>
<th>panel</th></tr>
{rows}
</table></body></html>
"""
