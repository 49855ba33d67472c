"""``lithowatch dlq`` end to end on the real broker: a result the dedupe service dead-letters
because its mask's blob is missing is listed, the blob is written, ``dlq replay`` sends the
original message back and the service now passes it on as unique."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.cli import main as cli_main
from app.dlq_cli import REPLAY_HEADER
from app.launcher import EmbeddedStack
from app.supervisor import Pipeline
from shared.blobstore import LocalBlobStore
from shared.contracts import DLQRecord, ImageRef, SimResult, Topics, UniqueResult
from shared.imaging import encode_image, sha256_hex
from shared.testing import collect, make_result, produce

pytestmark = pytest.mark.integration


def _with_late_mask(result: SimResult, rng: np.random.Generator) -> tuple[SimResult, bytes]:
    """``result`` with a mask by URI into the blob store, whose blob is not written yet."""
    mask = (rng.random((64, 64)) > 0.5).astype(np.float32)
    png = encode_image(mask, "png")
    ref = ImageRef(format="png", sha256=sha256_hex(png), shape=(64, 64), dtype="uint8",
                   uri=f"blob://{sha256_hex(png)}.png")
    return result.model_copy(update={"mask": ref}), png


def _records_of(records: list, topic: str, result_id: str) -> list:
    return [r for r in records if r.topic == topic and r.key == result_id.encode()]


def test_a_dead_letter_is_replayed_once_its_cause_is_fixed(
        stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(11)
    late, png = _with_late_mask(make_result("late-blob", rng), rng)
    produce(stack.bootstrap, Topics.RESULTS, [make_result("on-time", rng), late])
    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    monkeypatch.setenv("LITHOWATCH_BLOB_ROOT", str(stack.workdir / "blobs"))
    pipeline = Pipeline(stack, service_env={"LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000",
                                            "LITHOWATCH_SESSION_TIMEOUT_MS": "6000"})
    pipeline.start_service("dedupe")
    try:
        pipeline.wait_ready(120)
        first = collect(stack.bootstrap, [Topics.UNIQUE, Topics.DLQ],
                        lambda rs: bool(_records_of(rs, Topics.DLQ, "late-blob")
                                        and _records_of(rs, Topics.UNIQUE, "on-time")), 90)
        (dead,) = [DLQRecord.model_validate_json(r.value)
                   for r in _records_of(first, Topics.DLQ, "late-blob")]
        assert (dead.stage, dead.reason, dead.topic) == ("dedupe", "blob_missing", Topics.RESULTS)
        assert not _records_of(first, Topics.UNIQUE, "late-blob")

        assert cli_main(["dlq", "list", "--stage", "dedupe"]) == 0
        listed = capfd.readouterr().out
        assert "1 of 1 dead letters" in listed and "blob_missing  1" in listed
        assert f"{Topics.RESULTS}[{dead.partition}]@{dead.offset}  result late-blob" in listed

        # the cause is fixed: the farm's blob arrives
        LocalBlobStore(Path(stack.workdir) / "blobs").put(png, sha256_hex(png), "png")
        assert cli_main(["dlq", "replay", "--reason", "blob_missing", "--dry-run"]) == 0
        assert "would replay 1 messages" in capfd.readouterr().out
        assert cli_main(["dlq", "replay", "--reason", "blob_missing"]) == 0
        assert f"replayed 1 messages to {Topics.RESULTS} (1)" in capfd.readouterr().out

        after = collect(stack.bootstrap, [Topics.UNIQUE],
                        lambda rs: bool(_records_of(rs, Topics.UNIQUE, "late-blob")), 90)
    finally:
        pipeline.stop()
    (unique,) = _records_of(after, Topics.UNIQUE, "late-blob")
    assert UniqueResult.model_validate_json(unique.value).mask.uri == late.mask.uri
    headers = dict(unique.headers)
    assert headers[REPLAY_HEADER].startswith(f"{Topics.DLQ}/".encode())  # the trace names the dead letter
    assert headers["result_id"] == b"late-blob"
