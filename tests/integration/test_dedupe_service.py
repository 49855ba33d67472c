"""The dedupe service on the real broker and Redis: a stream with known duplicates comes out split
exactly right, also when the service is killed (-9) mid-stream and restarted."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from app.launcher import EmbeddedStack
from app.supervisor import Pipeline
from services.simfarm.core import FarmSettings, FarmStream
from shared.contracts import DuplicateRecord, SimResult, Topics, UniqueResult
from shared.testing import collect, produce

pytestmark = pytest.mark.integration


def known_stream(n_layouts: int, seed: int) -> list[SimResult]:
    """Distinct layouts, then exact copies of half of them and window-shifted re-simulations."""
    families = ("grating", "contacts", "shapes", "routing", "sram")
    farm = FarmStream(FarmSettings(seed=seed, families=families))
    originals = [farm.next_result() for _ in range(n_layouts)]
    copies = [
        o.model_copy(update={"result_id": f"copy-{i:03d}"}) for i, o in enumerate(originals[: n_layouts // 2])
    ]
    # a farm with the same seed draws the same first layout, then re-simulates what it streamed
    resim_farm = FarmStream(
        FarmSettings(
            seed=seed, families=families, duplicate_fraction=1.0, duplicate_max_shift_px=12, job_id="resim"
        )
    )
    resims = [resim_farm.next_result() for _ in range(n_layouts // 4 + 1)][1:]
    rng = np.random.default_rng(seed)
    later = [*copies, *resims]
    return [*originals, *[later[i] for i in rng.permutation(len(later))]]


def split(records: list) -> tuple[set[str], dict[str, str]]:
    unique = {
        UniqueResult.model_validate_json(r.value).result_id for r in records if r.topic == Topics.UNIQUE
    }
    dups = {
        d.result_id: d.duplicate_of
        for d in (
            DuplicateRecord.model_validate_json(r.value) for r in records if r.topic == Topics.DUPLICATES
        )
    }
    return unique, dups


def test_known_duplicates_split_exactly_also_after_kill9(stack: EmbeddedStack) -> None:
    stream = known_stream(40, seed=3)
    first_ids = {r.result_id for r in stream[:40]}
    later = stream[40:]
    pipeline = Pipeline(
        stack,
        service_env={
            "LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000",
            "LITHOWATCH_SESSION_TIMEOUT_MS": "6000",
            "LITHOWATCH_BATCH_MAX_MESSAGES": "4",
        },
    )
    running = pipeline.start_service("dedupe")
    try:
        pipeline.wait_ready(120)
        produce(stack.bootstrap, Topics.RESULTS, stream[:40])
        collect(stack.bootstrap, [Topics.UNIQUE, Topics.DUPLICATES], lambda rs: len(rs) >= 40, 120)
        produce(stack.bootstrap, Topics.RESULTS, later)
        collect(stack.bootstrap, [Topics.UNIQUE, Topics.DUPLICATES], lambda rs: len(rs) >= 45, 120)
        pipeline.restart(running, kill9=True)
        records = collect(
            stack.bootstrap,
            [Topics.UNIQUE, Topics.DUPLICATES],
            lambda rs: set().union(*split(rs)[:1], split(rs)[1]) >= {r.result_id for r in stream},
            timeout_seconds=180,
        )
    finally:
        pipeline.stop()
    unique, dups = split(records)
    assert unique == first_ids, "every distinct layout is unique, and nothing else"
    assert set(dups) == {r.result_id for r in later}
    assert not unique & set(dups)
    copies = {r.result_id: r for r in later if r.result_id.startswith("copy-")}
    for rid in copies:
        assert dups[rid] in first_ids
    by_id = {r.result_id: r for r in stream}
    for rid, of in dups.items():
        assert by_id[of].labels["group"] == by_id[rid].labels["group"], (rid, of)


def test_two_copies_moved_apart_before_their_original_end_as_one_layout_with_a_late_duplicate(
    stack: EmbeddedStack,
) -> None:
    from shared.contracts import VerdictRecord
    from shared.imageref import make_image_ref
    from shared.imaging import to_uint8
    from shared.verification import strip_features
    from toolkit.litho import generate_layout, rasterize

    def window(seed: int, shift_px: int) -> tuple[np.ndarray, np.ndarray]:
        layout = generate_layout("routing", np.random.default_rng(seed))
        mask = rasterize(layout, (512.0 + 4.0 * shift_px, 512.0), 256, 4.0)
        return mask, (mask > 0.5).astype(np.float32)

    seed = next(s for s in range(40)
                if strip_features(to_uint8(window(s, 14)[0]), to_uint8(window(s, -14)[0]), (-28, 0), None,
                                  16).total_px > 50)
    first = SimResult(result_id="right", job_id="job-1", clip_id="clip-9", nm_per_px=4.0,
                      mask=make_image_ref(window(seed, 14)[0]), simulated=make_image_ref(window(seed, 14)[1]),
                      produced_at=datetime.now(UTC))
    second = first.model_copy(update={"result_id": "left", "job_id": "job-2", "mask": make_image_ref(
        window(seed, -14)[0]), "simulated": make_image_ref(window(seed, -14)[1])})
    original = first.model_copy(update={"result_id": "original", "job_id": "job-3", "mask": make_image_ref(
        window(seed, 0)[0]), "simulated": make_image_ref(window(seed, 0)[1])})
    pipeline = Pipeline(stack, service_env={"LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000",
                                            "LITHOWATCH_SESSION_TIMEOUT_MS": "6000"})
    pipeline.start_service("dedupe")
    try:
        pipeline.wait_ready(120)
        produce(stack.bootstrap, Topics.RESULTS, [first, second])
        collect(stack.bootstrap, [Topics.UNIQUE], lambda rs: len(rs) >= 2, 120)
        produce(stack.bootstrap, Topics.RESULTS, [original])
        records = collect(stack.bootstrap, [Topics.UNIQUE, Topics.DUPLICATES, Topics.VERDICTS],
                          lambda rs: sum(r.topic == Topics.VERDICTS for r in rs) >= 2, 120)
    finally:
        pipeline.stop()
    unique, dups = split(records)
    assert unique == {"right", "left"}  # both kept when they came
    assert set(dups) == {"original", "right", "left"} - {dups["original"]}
    late_id = next(rid for rid in dups if rid != "original")
    late = next(DuplicateRecord.model_validate_json(r.value) for r in records
                if r.topic == Topics.DUPLICATES and r.key == late_id.encode())
    assert late.duplicate_of == "original" and late.details["late"] is True
    verdicts = {v.result_id: v for v in (VerdictRecord.model_validate_json(r.value) for r in records
                                         if r.topic == Topics.VERDICTS)}
    assert verdicts[late_id].outcome == "duplicate" and verdicts[late_id].duplicate_of == "original"
    assert verdicts[late_id].job_id == ("job-1" if late_id == "right" else "job-2")
