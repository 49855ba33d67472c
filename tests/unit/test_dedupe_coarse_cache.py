"""The ranking's coarse masks kept from batch to batch: same verdicts, made once, never mixed up."""

from __future__ import annotations

from datetime import UTC, datetime

import cv2
import numpy as np

from services.dedupe.core import DedupeCore, DedupeSettings, encode_payload
from services.dedupe.decoded import CoarseSums, payload_key, sums_bytes
from services.dedupe.store_memory import InMemoryDedupeStore
from shared.contracts import DuplicateRecord, SimResult
from shared.imageref import make_image_ref
from shared.verification import coarse_overlap_sums
from toolkit.litho import generate_layout, rasterize

NM_PER_PX, SIZE_PX, PAD_PX = 4.0, 256, 24


def windows(family: str, seed: int, shifts: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mask, print) of one generated layout seen through windows moved by ``shifts`` (px)."""
    layout = generate_layout(family, np.random.default_rng(seed))
    big = rasterize(layout, (512.0 - PAD_PX * NM_PER_PX,) * 2, SIZE_PX + 2 * PAD_PX, NM_PER_PX)
    latent = cv2.GaussianBlur(big, (0, 0), 3.0)
    out = []
    for dx, dy in shifts:
        x, y = PAD_PX + dx, PAD_PX + dy
        out.append((big[y:y + SIZE_PX, x:x + SIZE_PX].copy(),
                    (latent[y:y + SIZE_PX, x:x + SIZE_PX] > 0.45).astype(np.float32)))
    return out


def result(result_id: str, mask: np.ndarray, printed: np.ndarray) -> SimResult:
    return SimResult(result_id=result_id, nm_per_px=NM_PER_PX, mask=make_image_ref(mask, "png"),
                     simulated=make_image_ref(printed, "png"), produced_at=datetime.now(UTC))


def stream() -> list[list[SimResult]]:
    """Three batches: sparse layouts first, then their moved windows among new layouts."""
    firsts, moved = [], []
    for k, family in enumerate(["contacts", "routing", "contacts", "sram", "routing", "contacts"]):
        first, again = windows(family, 40 + k, [(0, 0), (9, -6)])
        firsts.append(result(f"{family}-{k}", *first))
        moved.append(result(f"{family}-{k}-moved", *again))
    others = [result(f"other-{k}", *windows("contacts", 60 + k, [(0, 0)])[0]) for k in range(4)]
    return [firsts, others[:2] + moved[:3], moved[3:] + others[2:]]


def verdicts(core: DedupeCore) -> list[str | None]:
    out = [o for batch in stream() for o in core.process_batch(batch)]
    return [o.duplicate_of if isinstance(o, DuplicateRecord) else None for o in out]


def test_kept_coarse_masks_give_the_same_verdicts_and_are_made_once() -> None:
    kept = DedupeCore(InMemoryDedupeStore(), DedupeSettings())
    per_batch = DedupeCore(InMemoryDedupeStore(), DedupeSettings(coarse_cache_mib=0))
    answers = verdicts(kept)
    assert answers == verdicts(per_batch)
    assert answers.count(None) < len(answers)  # some moved windows were found
    assert len(per_batch.coarse) == 0 and per_batch.coarse.bytes == 0
    # each result's coarse mask was made at most once (a result of the same batch may be ranked as a
    # candidate before it is decided), then reused by later batches
    assert kept.coarse.misses <= len(answers) and kept.coarse.hits > 0


def test_a_payload_under_a_reused_id_is_not_ranked_by_the_other_pixels() -> None:
    (a,), (b,) = windows("contacts", 1, [(0, 0)]), windows("routing", 2, [(0, 0)])
    payload_a, payload_b = encode_payload(*_u8(a)), encode_payload(*_u8(b))
    assert payload_key("r", payload_a) != payload_key("r", payload_b)
    cache = CoarseSums(2**20)
    first = cache.get(payload_key("r", payload_a), lambda: coarse_overlap_sums(_u8(a)[0], 32))
    second = cache.get(payload_key("r", payload_b), lambda: coarse_overlap_sums(_u8(b)[0], 32))
    assert first is not None and second is not None and first is not second
    assert (cache.hits, cache.misses) == (0, 2)


def test_the_least_recently_used_go_first_past_the_budget() -> None:
    sums = coarse_overlap_sums(_u8(windows("contacts", 3, [(0, 0)])[0])[0], 32)
    cache = CoarseSums(3 * sums_bytes(sums))
    for k in range(3):
        cache.put(("r", k, 0), sums)
    cache.get(("r", 0, 0), lambda: None)  # used again: now the newest
    cache.put(("r", 3, 0), sums)
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    made: list[int] = []
    cache.get(("r", 1, 0), lambda: made.append(1) or sums)  # evicted: made again
    cache.get(("r", 0, 0), lambda: made.append(0) or sums)  # kept
    assert made == [1]
    undecodable = CoarseSums(0)
    assert undecodable.get(("x", 1, 2), lambda: None) is None and len(undecodable) == 0


def _u8(pair: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    mask, printed = pair
    return np.clip(np.rint(mask * 255.0), 0, 255).astype(np.uint8), printed > 0.5


def test_the_service_passes_the_cache_budget_to_the_core() -> None:
    from services.dedupe.main import DedupeServiceSettings

    assert DedupeServiceSettings().core_settings().coarse_cache_mib == 128
    assert DedupeServiceSettings(dedupe_coarse_cache_mib=0).core_settings().coarse_cache_mib == 0
