"""The explain service's pages are read by the HTTP threads while the consumer thread adds alerts."""

from __future__ import annotations

import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.explain.core import ExplainCore
from services.explain.routes import AlertPages
from services.explain.stage import ExplainStage
from shared.blobstore import LocalBlobStore
from shared.contracts import AlertRecord, ImageRef, Neighbour
from shared.imageref import ImageLoader
from shared.metrics import MetricsServer
from shared.testing import make_result

PAGE_READS = 150


def alert(i: int) -> AlertRecord:
    result = make_result(f"novel-{i}", np.random.default_rng(i % 4), size_px=32)
    return AlertRecord(
        alert_id=f"alert-{i}", result_id=result.result_id, novelty_score=0.4, threshold=0.2,
        neighbours=[Neighbour(id=f"lib-{i}", similarity=0.6, labels={"family": "grating"})],
        mask=result.mask, simulated=result.simulated, model_version="m", labels={"family": "sram"},
        produced_at=result.produced_at,
    )


@pytest.fixture
def fast_thread_switches() -> Iterator[None]:
    """Switch threads often, so a read that is not safe against the writer fails quickly."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_pages_never_fail_while_alerts_are_added(tmp_path: Path, fast_thread_switches: None) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    pages = AlertPages(store, keep_recent=60)
    stage = ExplainStage(ExplainCore(ImageLoader(store, 1 << 20), store, max_neighbours=1), pages)
    alerts = [alert(i) for i in range(8)]
    for item in alerts * 8:
        stage.process_batch([item])  # a full page before the reads begin
    stop = threading.Event()
    added = [0]

    def consume() -> None:
        while not stop.is_set():
            stage.process_batch([alerts[added[0] % len(alerts)]])
            added[0] += 1

    server = MetricsServer("127.0.0.1", 0, lambda: True, pages.routes(), CollectorRegistry()).start()
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    statuses: list[int] = []
    try:
        base = f"http://127.0.0.1:{server.port}"
        for _ in range(PAGE_READS):
            try:
                with urllib.request.urlopen(f"{base}/alerts", timeout=10) as response:
                    statuses.append(response.status)
                    page = response.read().decode()
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
                continue
            key = page.split("href='/panels/", 1)[1].split("'", 1)[0]
            with urllib.request.urlopen(f"{base}/panels/{key}", timeout=10) as response:
                statuses.append(response.status)
    finally:
        stop.set()
        consumer.join(30)
        server.stop()
    assert added[0] > 0, "the consumer thread never added an alert during the reads"
    assert len(statuses) == 2 * PAGE_READS
    assert [status for status in statuses if status != 200] == []


def test_the_recent_alerts_are_a_copy_newest_first(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    pages = AlertPages(store, keep_recent=2)
    stage = ExplainStage(ExplainCore(ImageLoader(store, 1 << 20), store), pages)
    for i in range(3):
        stage.process_batch([alert(i)])
    recent = pages.recent_alerts()
    assert [r.alert.alert_id for r in recent] == ["alert-2", "alert-1"]
    recent.clear()
    assert len(pages.recent_alerts()) == 2
    assert isinstance(recent, list) and all(isinstance(r.alert.mask, ImageRef) for r in pages.recent_alerts())
