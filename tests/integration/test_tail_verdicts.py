"""``lithowatch tail`` shows the verdicts topic readably, on the real broker."""

from __future__ import annotations

import json

import pytest

from app.cli import main
from app.launcher import EmbeddedStack
from shared.contracts import Topics, VerdictRecord
from shared.testing import produce

pytestmark = pytest.mark.integration


def test_tail_prints_one_line_per_verdict_latest_last(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    dead = VerdictRecord(result_id="r-9", outcome="dead_lettered", stage="dedupe", reason="blob_missing",
                         job_id="job-1", clip_id="clip-9")
    scored = VerdictRecord(result_id="r-9", outcome="scored", stage="novelty", decision="known",
                           novelty_score=0.02, threshold=0.1, model_version="enc", job_id="job-1",
                           clip_id="clip-9", alignment_flagged=False)
    other = VerdictRecord(result_id="r-1", outcome="duplicate", stage="dedupe", duplicate_of="r-0",
                          method="exact")
    produce(stack.bootstrap, Topics.VERDICTS, [dead, other])
    produce(stack.bootstrap, Topics.VERDICTS, [scored])  # after the dead letter: same key, same partition

    assert main(["tail", Topics.VERDICTS, "--from-beginning", "--key", "r-9", "--timeout", "2"]) == 0
    lines = capfd.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["DEAD_LETTERED", "r-9"], ["SCORED", "r-9"]]
    assert "at dedupe: blob_missing" in lines[0] and "job job-1  clip clip-9" in lines[0]
    assert "known 0.020 < 0.100  model enc" in lines[1]

    assert main(["tail", Topics.VERDICTS, "--from-beginning", "--json", "--timeout", "2"]) == 0
    shown = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert sorted((v["result_id"], v["outcome"]) for v in shown) == [
        ("r-1", "duplicate"), ("r-9", "dead_lettered"), ("r-9", "scored"),
    ]
