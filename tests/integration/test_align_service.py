"""The align service on the real broker: known offsets recovered, bad images to the DLQ."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from app.launcher import EmbeddedStack
from app.supervisor import SHARED_HOST_NICE, Pipeline
from services.simfarm.core import FarmSettings, FarmStream
from shared.contracts import AlignedResult, DLQRecord, Hashes, Topics, UniqueResult
from shared.imageref import ImageLoader
from shared.testing import collect, produce

pytestmark = pytest.mark.integration


def test_align_service_recovers_offsets_and_dlqs_bad_images(stack: EmbeddedStack) -> None:
    farm = FarmStream(
        FarmSettings(seed=5, families=("shapes", "routing", "contacts"), print_offset_px=8.0, size_px=256)
    )
    results = [farm.next_result() for _ in range(12)]
    unique = [
        UniqueResult(**r.model_dump(exclude={"schema_version"}), hashes=Hashes(exact="0" * 64))
        for r in results
    ]
    small = unique[0].model_copy(
        update={
            "result_id": "mismatched",
            "simulated": unique[1].mask.model_copy(update={"shape": (128, 128)}),
        }
    )
    produce(stack.bootstrap, Topics.UNIQUE, [*unique, small])
    pipeline = Pipeline(stack, service_env={"LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000"}, nice=SHARED_HOST_NICE)
    running = pipeline.start_service("align")
    try:
        pipeline.wait_ready(120)
        # as under `lithowatch up`: the stage yields the CPU to the embedder
        stat = Path(f"/proc/{running.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[16]) == min(19, os.nice(0) + SHARED_HOST_NICE["align"])
        records = collect(stack.bootstrap, [Topics.ALIGNED, Topics.DLQ], lambda rs: len(rs) >= 13, 120)
    finally:
        pipeline.stop()
    aligned = {
        a.result_id: a
        for a in (AlignedResult.model_validate_json(r.value) for r in records if r.topic == Topics.ALIGNED)
    }
    dlq = [DLQRecord.model_validate_json(r.value) for r in records if r.topic == Topics.DLQ]
    assert [d.result_id for d in dlq] == ["mismatched"] and dlq[0].reason == "image_shape"
    assert set(aligned) == {u.result_id for u in unique}
    errors = []
    for result in unique:
        out = aligned[result.result_id]
        if out.alignment_flagged:
            assert out.alignment_reason
            continue
        matrix = out.transform.as_array()
        dx, dy = result.labels["print_to_mask_dx_px"], result.labels["print_to_mask_dy_px"]
        assert isinstance(dx, float) and isinstance(dy, float)
        errors.append(np.hypot(matrix[0, 2] - dx, matrix[1, 2] - dy))
        assert ImageLoader()(out.aligned_simulated).shape == (256, 256)
    assert len(errors) >= 10
    assert np.median(errors) < 1.0
    assert max(errors) < 3.0
