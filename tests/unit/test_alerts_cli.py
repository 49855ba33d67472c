"""`lithowatch alerts` formatting: the result, its score, neighbours and the panel link."""

from __future__ import annotations

import numpy as np

from app.ops_cli import format_alert
from shared.contracts import AlertRecord, ExplanationRecord, ImageRef, Neighbour
from shared.imageref import make_image_ref
from shared.testing import make_result


def test_alert_lines_name_neighbours_and_panel() -> None:
    result = make_result("r-1", np.random.default_rng(0), labels={"family": "sram"})
    alert = AlertRecord(
        alert_id="alert-r-1",
        result_id="r-1",
        novelty_score=0.31,
        threshold=0.2,
        neighbours=[
            Neighbour(id="lib-7", similarity=0.69, labels={"family": "shapes"}),
            Neighbour(id="r-0", similarity=0.6, provisional=True),
        ],
        mask=result.mask,
        simulated=result.simulated,
        model_version="m",
        labels=result.labels,
        produced_at=result.produced_at,
    )
    panel_ref = make_image_ref(np.zeros((4, 4), np.float32))
    panel = ImageRef(
        **{**panel_ref.model_dump(), "inline_b64": None, "uri": f"blob://{panel_ref.sha256}.png"}
    )
    explanation = ExplanationRecord(
        alert_id="alert-r-1",
        result_id="r-1",
        panel=panel,
        neighbour_ids=["lib-7"],
        summary="",
        produced_at=result.produced_at,
    )
    text = format_alert(alert, explanation, "http://host:9105/")
    assert "result r-1" in text and "family sram" in text and "0.310 >= 0.200" in text
    assert "#1 lib-7  similarity 0.690  family shapes" in text
    assert "(provisional)" in text
    assert f"http://host:9105/panels/{panel_ref.sha256}.png" in text
    assert "not rendered yet" in format_alert(alert, None, "http://x")


def test_alert_text_from_messages_cannot_drive_the_terminal() -> None:
    result = make_result("r-2", np.random.default_rng(1))
    hostile = "x\x1b[2J\x1b]0;owned\x07\nALERT forged\r\x9b31m"
    alert = AlertRecord(
        alert_id=f"alert-{hostile}",
        result_id="r-2",  # a constrained id; the free-text fields carry the attack
        novelty_score=0.5,
        threshold=0.2,
        neighbours=[Neighbour(id=f"lib-{hostile}", similarity=0.7, labels={"family": hostile})],
        mask=result.mask,
        simulated=result.simulated,
        model_version="m",
        labels={"family": hostile},
        produced_at=result.produced_at,
    )
    panel_ref = make_image_ref(np.zeros((4, 4), np.float32))
    panel = ImageRef(**{**panel_ref.model_dump(), "inline_b64": None, "uri": f"blob://{hostile}.png"})
    explanation = ExplanationRecord(
        alert_id=alert.alert_id, result_id=alert.result_id, panel=panel, neighbour_ids=[],
        summary="", produced_at=result.produced_at,
    )
    for text in (format_alert(alert, explanation, "http://host:9105/"), format_alert(alert, None, "http://x")):
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text.replace("\n", ""))
        lines = text.split("\n")
        assert len(lines) == 3  # the alert, one neighbour, the panel: no forged lines
        escaped = "x\\x1b[2J\\x1b]0;owned\\x07\\nALERT forged\\r\\x9b31m"
        assert lines[0].startswith(f"ALERT alert-{escaped}  result r-2  family {escaped}")
        assert lines[1].startswith(f"  #1 lib-{escaped}  similarity 0.700  family {escaped}")
