"""The embed service on the real broker: its vectors equal offline embedding of the same input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.launcher import EmbeddedStack
from app.supervisor import Pipeline
from shared.contracts import AlignedResult, DLQRecord, EmbeddedResult, Hashes, Topics, Transform
from shared.imageref import ImageLoader, make_image_ref
from shared.model import build_untrained, load_encoder, save_encoder
from shared.testing import collect, make_result, produce

pytestmark = pytest.mark.integration


def aligned(result_id: str, seed: int) -> AlignedResult:
    base = make_result(result_id, np.random.default_rng(seed), size_px=96)
    return AlignedResult(
        **base.model_dump(exclude={"schema_version"}),
        hashes=Hashes(exact="0" * 64),
        aligned_simulated=base.simulated,
        transform=Transform.identity(),
    )


def test_service_vectors_match_offline_embedding(stack: EmbeddedStack, tmp_path: Path) -> None:
    model_dir = tmp_path / "encoder"
    save_encoder(build_untrained("resnet18", "mask,print", 64, seed=3), model_dir, {"objective": "untrained"})
    inputs = [aligned(f"e{i:03d}", i) for i in range(20)]
    bad_ref = make_image_ref(np.zeros((32, 32), np.float32))
    mismatched = inputs[0].model_copy(update={"result_id": "mismatched", "aligned_simulated": bad_ref})
    produce(stack.bootstrap, Topics.ALIGNED, [*inputs, mismatched])
    pipeline = Pipeline(
        stack,
        service_env={
            "LITHOWATCH_MODEL_PATH": str(model_dir),
            "LITHOWATCH_TORCH_THREADS": "1",
            "LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000",
        },
    )
    pipeline.start_service("embed")
    try:
        pipeline.wait_ready(180)
        records = collect(stack.bootstrap, [Topics.EMBEDDED, Topics.DLQ], lambda rs: len(rs) >= 21, 120)
    finally:
        pipeline.stop()
    out = {
        e.result_id: e
        for e in (EmbeddedResult.model_validate_json(r.value) for r in records if r.topic == Topics.EMBEDDED)
    }
    dlq = [DLQRecord.model_validate_json(r.value) for r in records if r.topic == Topics.DLQ]
    assert [d.result_id for d in dlq] == ["mismatched"]
    encoder = load_encoder(model_dir, device="cpu")
    load = ImageLoader()
    offline = encoder.embed([load(i.mask) for i in inputs], [load(i.aligned_simulated) for i in inputs])
    assert set(out) == {i.result_id for i in inputs}
    for row, item in enumerate(inputs):
        served = out[item.result_id]
        assert served.model_version == encoder.model_version
        np.testing.assert_allclose(served.embedding.to_array(), offline[row], atol=1e-5)
