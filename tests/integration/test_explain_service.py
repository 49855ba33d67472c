"""The explain service on the real broker: panels stored, records published, page links resolve."""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import pytest

from app.launcher import EmbeddedStack
from app.supervisor import Pipeline
from shared.blobstore import LocalBlobStore
from shared.contracts import AlertRecord, ExplanationRecord, Neighbour, Topics
from shared.imaging import decode_image
from shared.testing import collect, make_result, produce

pytestmark = pytest.mark.integration


def alert(i: int) -> AlertRecord:
    result = make_result(f"novel-{i}", np.random.default_rng(i))
    neighbour = make_result(f"lib-{i}", np.random.default_rng(100 + i))
    return AlertRecord(
        alert_id=f"alert-novel-{i}", result_id=result.result_id, novelty_score=0.4, threshold=0.2,
        neighbours=[Neighbour(id=neighbour.result_id, similarity=0.6, labels={"family": "grating"},
                              simulated=neighbour.simulated), Neighbour(id="no-image", similarity=0.5)],
        mask=result.mask, simulated=result.simulated, model_version="m", labels={"family": "sram"},
        produced_at=result.produced_at,
    )


def test_explain_renders_panels_and_serves_the_alerts_page(stack: EmbeddedStack) -> None:
    produce(stack.bootstrap, Topics.ALERTS, [alert(i) for i in range(3)])
    pipeline = Pipeline(stack)
    service = pipeline.start_service("explain")
    try:
        pipeline.wait_ready(120)
        records = collect(stack.bootstrap, [Topics.EXPLANATIONS], lambda rs: len(rs) >= 3, 60)
        explanations = [ExplanationRecord.model_validate_json(r.value) for r in records]
        assert {e.result_id for e in explanations} == {"novel-0", "novel-1", "novel-2"}
        store = LocalBlobStore(stack.workdir / "blobs")
        for explanation in explanations:
            assert explanation.panel.uri is not None
            panel = decode_image(store.get(explanation.panel.uri))
            assert panel.shape == explanation.panel.shape and panel.shape[1] > 4 * 192
            assert explanation.neighbour_ids == [f"lib-{explanation.result_id[-1]}", "no-image"]
        base = f"http://127.0.0.1:{service.metrics_port}"
        page = urllib.request.urlopen(f"{base}/alerts", timeout=5).read().decode()
        links = sorted(set(re.findall(r"href='([^']+)'", page)))
        assert len(links) == 3
        for link in links:
            with urllib.request.urlopen(base + link, timeout=5) as response:
                assert response.status == 200 and response.headers["Content-Type"] == "image/png"
    finally:
        pipeline.stop()
