"""The dedupe core with the in-memory store: exact, near and no duplicates, redelivery."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import cv2
import numpy as np
import pytest

from services.dedupe.core import (
    DedupeCore,
    DedupeSettings,
    decode_payload,
    encode_payload,
    verify_shifted_match,
)
from services.dedupe.store import Candidate, DedupeItem, InMemoryDedupeStore
from shared.contracts import DuplicateRecord, ImageRef, SimResult, UniqueResult
from shared.errors import ConfigError, ImageError, InputError
from shared.hashing import hamming_distance, spectral_hash, split_bands
from shared.imageref import make_image_ref
from shared.imaging import ImageFormat, sha256_hex, to_uint8
from shared.litho import Layout, generate_layout, rasterize

NM_PER_PX = 4.0
SIZE_PX = 256
PAD_PX = 40
BASE_NM = 512.0


class Canvas:
    """A layout rasterised around the nominal window, with a blur-and-threshold print of it."""

    def __init__(self, layout: Layout) -> None:
        origin = BASE_NM - PAD_PX * NM_PER_PX
        self.mask = rasterize(layout, (origin, origin), SIZE_PX + 2 * PAD_PX, NM_PER_PX)
        self.latent = cv2.GaussianBlur(self.mask, (0, 0), 3.0)

    def window(self, shift_px: tuple[int, int] = (0, 0), dose: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        x, y = PAD_PX + shift_px[0], PAD_PX + shift_px[1]
        mask = self.mask[y:y + SIZE_PX, x:x + SIZE_PX].copy()
        printed = (self.latent[y:y + SIZE_PX, x:x + SIZE_PX] * dose > 0.45).astype(np.float32)
        return mask, printed


def result(result_id: str, mask: np.ndarray, printed: np.ndarray, fmt: ImageFormat = "png") -> SimResult:
    return SimResult(result_id=result_id, nm_per_px=NM_PER_PX, mask=make_image_ref(mask, fmt),
                     simulated=make_image_ref(printed, fmt), labels={"case": result_id},
                     produced_at=datetime.now(UTC))


def layout(family: str, seed: int) -> Layout:
    return generate_layout(family, np.random.default_rng(seed))


def grating(pitch_nm: float, width_nm: float) -> Layout:
    xs = np.arange(0.0, 2048.0, pitch_nm)
    rects = np.stack([xs, np.zeros_like(xs), xs + width_nm, np.full_like(xs, 2048.0)], axis=1)
    return Layout(rects, 2048.0, "grating")


@pytest.fixture
def core() -> DedupeCore:
    return DedupeCore(InMemoryDedupeStore(), DedupeSettings())


def test_exact_duplicate_in_another_encoding(core: DedupeCore) -> None:
    mask, printed = Canvas(layout("routing", 1)).window()
    first, again = core.process_batch([result("a", mask, printed)]), core.process_batch(
        [result("b", mask, printed, fmt="npy")])
    assert isinstance(first[0], UniqueResult)
    assert first[0].hashes.exact and set(first[0].hashes.perceptual) == {"spectral-v1"}
    dup = again[0]
    assert isinstance(dup, DuplicateRecord)
    assert (dup.method, dup.duplicate_of, dup.distance, dup.stage) == ("exact", "a", 0.0, "dedupe")
    assert dup.labels == {"case": "b"}


@pytest.mark.parametrize(("family", "shift", "dose"), [
    ("routing", (9, -13), 1.02), ("contacts", (-16, 16), 0.97), ("grating", (16, 0), 1.0),
    ("sram", (3, 7), 1.03),
])
def test_shifted_resimulation_is_a_near_duplicate(core: DedupeCore, family: str, shift: tuple[int, int],
                                                  dose: float) -> None:
    canvas = Canvas(layout(family, 2))
    core.process_batch([result("orig", *canvas.window())])
    (dup,) = core.process_batch([result("resim", *canvas.window(shift, dose))])
    assert isinstance(dup, DuplicateRecord)
    assert (dup.method, dup.duplicate_of) == ("perceptual", "orig")
    assert 0.0 <= dup.distance <= 0.25
    assert dup.details["mask_mismatch_px"] == 0
    if family != "grating":  # a grating matches itself at any whole number of periods along it
        assert dup.details["shift_px"] == list(shift)


def test_redelivery_gets_the_same_answer(core: DedupeCore) -> None:
    canvas = Canvas(layout("shapes", 3))
    original = result("orig", *canvas.window())
    resim = result("resim", *canvas.window((5, 5), 1.01))
    assert isinstance(core.process_batch([original])[0], UniqueResult)
    first = core.process_batch([resim])[0]
    assert isinstance(core.process_batch([original])[0], UniqueResult)  # not a duplicate of itself
    replay = core.process_batch([resim, original])
    assert isinstance(first, DuplicateRecord) and isinstance(replay[0], DuplicateRecord)
    assert (replay[0].duplicate_of, replay[0].method) == (first.duplicate_of, first.method)
    assert replay[0].details.get("replayed") is True
    assert isinstance(replay[1], UniqueResult)


def test_the_same_result_twice_in_one_batch_stays_unique(core: DedupeCore) -> None:
    r = result("twice", *Canvas(layout("line_ends", 4)).window())
    outcomes = core.process_batch([r, r])
    assert all(isinstance(o, UniqueResult) for o in outcomes)


def test_distinct_layouts_of_one_family_stay_unique(core: DedupeCore) -> None:
    batch = [result(f"{family}-{seed}", *Canvas(layout(family, seed)).window())
             for family in ("routing", "contacts", "sram") for seed in (10, 11, 12)]
    assert all(isinstance(o, UniqueResult) for o in core.process_batch(batch))


def test_gratings_of_nearly_one_pitch_are_told_apart_by_pixels(core: DedupeCore) -> None:
    a, b = Canvas(grating(150.0, 70.0)), Canvas(grating(150.8, 70.0))
    hash_a, hash_b = spectral_hash(a.window()[0]), spectral_hash(b.window()[0])
    assert hamming_distance(hash_a.value, hash_b.value) <= core.settings.hamming_radius  # a hash candidate
    outcomes = core.process_batch([result("p150", *a.window()), result("p150.8", *b.window((4, 0)))])
    assert all(isinstance(o, UniqueResult) for o in outcomes)


def test_a_mask_defect_is_never_a_duplicate(core: DedupeCore) -> None:
    clean = layout("routing", 5)
    defect = clean.with_rects(np.vstack([clean.rects, [[900.0, 900.0, 940.0, 1000.0]]]))
    core.process_batch([result("clean", *Canvas(clean).window())])
    (outcome,) = core.process_batch([result("defect", *Canvas(defect).window((6, -4)))])
    assert isinstance(outcome, UniqueResult)


def test_one_batch_or_one_at_a_time_agree() -> None:
    canvases = [Canvas(layout("contacts", 20)), Canvas(layout("routing", 21))]
    stream = [result("c0", *canvases[0].window()), result("r0", *canvases[1].window()),
              result("c1", *canvases[0].window((7, -3), 1.02)), result("r1", *canvases[1].window((-12, 4))),
              result("c2", *canvases[0].window((7, -3), 1.02))]

    def verdicts(batches: list[list[SimResult]]) -> list[str | None]:
        core = DedupeCore(InMemoryDedupeStore(), DedupeSettings())
        out = [o for batch in batches for o in core.process_batch(batch)]
        return [o.duplicate_of if isinstance(o, DuplicateRecord) else None for o in out]

    together = verdicts([stream])
    assert together == [None, None, "c0", "r0", "c1"]
    assert verdicts([[r] for r in stream]) == together


def test_an_undecodable_image_rejects_only_its_result(core: DedupeCore) -> None:
    good = result("good", *Canvas(layout("sram", 6)).window())
    junk = b"not an image at all"
    bad_ref = ImageRef(format="png", sha256=sha256_hex(junk), shape=(SIZE_PX, SIZE_PX), dtype="uint8",
                       inline_b64=base64.b64encode(junk).decode())
    bad = good.model_copy(update={"result_id": "bad", "mask": bad_ref})
    outcomes = core.process_batch([bad, good])
    assert isinstance(outcomes[0], InputError) and isinstance(outcomes[1], UniqueResult)
    small_print = make_image_ref(np.zeros((64, 64), np.float32))
    mismatched = good.model_copy(update={"result_id": "shapes", "simulated": small_print})
    assert isinstance(core.process_batch([mismatched])[0], ImageError)


def test_entries_expire_after_the_ttl() -> None:
    now = [0.0]
    store = InMemoryDedupeStore(ttl_seconds=100.0, clock=lambda: now[0])
    core = DedupeCore(store, DedupeSettings())
    canvas = Canvas(layout("grating", 7))
    core.process_batch([result("old", *canvas.window())])
    now[0] = 101.0
    assert isinstance(core.process_batch([result("new", *canvas.window((2, 2)))])[0], UniqueResult)


def test_pixel_check_rejects_a_print_difference_and_accepts_edge_wobble() -> None:
    canvas = Canvas(layout("contacts", 8))
    mask, printed = canvas.window()
    mask_b, printed_b = canvas.window((10, -6), 1.03)
    settings = DedupeSettings()
    match = verify_shifted_match(to_uint8(mask), printed > 0.5, to_uint8(mask_b), printed_b > 0.5, settings)
    assert match is not None and match["shift_px"] == [10, -6]
    blob = printed_b.copy()
    blob[120:128, 120:128] = 1.0 - blob[120:128, 120:128]
    assert verify_shifted_match(to_uint8(mask), printed > 0.5, to_uint8(mask_b), blob > 0.5, settings) is None
    other = np.zeros((128, 128), np.uint8)
    assert verify_shifted_match(to_uint8(mask), printed > 0.5, other, other > 0, settings) is None


def test_payload_round_trip_and_corruption() -> None:
    mask, printed = Canvas(layout("shapes", 9)).window()
    payload = encode_payload(to_uint8(mask), printed > 0.5)
    mask_u8, print_bits = decode_payload(payload)
    assert np.array_equal(mask_u8, to_uint8(mask)) and np.array_equal(print_bits, printed > 0.5)
    with pytest.raises(ImageError):
        decode_payload(payload[:40])
    with pytest.raises(ImageError):
        decode_payload(b"junk")


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        DedupeCore(InMemoryDedupeStore(), DedupeSettings(hash_bits=256, n_bands=24))


# -- the band store on synthetic hashes ----------------------------------------------------------


def synthetic_item(result_id: str, value: int, digest: str | None = None) -> DedupeItem:
    bands = tuple(split_bands(value, 256, 16))
    return DedupeItem(result_id, digest or f"digest-{result_id}", value, 256, "test", bands,
                      tuple(enumerate(bands)), payload=result_id.encode())


def test_band_store_finds_by_band_verifies_and_drops_expired_members() -> None:
    now = [1000.0]
    store = InMemoryDedupeStore(ttl_seconds=100.0, clock=lambda: now[0])
    offered: list[str] = []

    def never(item: DedupeItem, candidate: Candidate) -> dict[str, object] | None:
        offered.append(candidate.result_id)
        return None

    value = int.from_bytes(np.random.default_rng(0).bytes(32), "big")
    store.check_and_insert_batch([synthetic_item("a", value)], never, hamming_radius=8, max_candidates=4)
    now[0] += 60.0
    (b,) = store.check_and_insert_batch([synthetic_item("b", value ^ 1)], never, hamming_radius=8,
                                        max_candidates=4)
    assert b.status == "unique" and offered == ["a"]
    now[0] += 60.0  # "a" is now older than the TTL; the band sets live on (refreshed by "b")
    offered.clear()
    (c,) = store.check_and_insert_batch([synthetic_item("c", value ^ 3)], lambda i, cand: {"ok": 1},
                                        hamming_radius=8, max_candidates=4)
    assert (c.status, c.duplicate_of, c.distance_bits, c.details) == ("perceptual", "b", 1, {"ok": 1})
    probed = [store._members(f"b:test:{band}:{v:x}") for band, v in synthetic_item("c", value ^ 3).probes]
    members = set().union(*probed)
    assert not any(m.startswith("a|") for m in members)  # removed when met
    assert any(m.startswith("b|") for m in members)


def test_band_store_respects_radius_and_candidate_limit() -> None:
    store = InMemoryDedupeStore()
    value = int.from_bytes(np.random.default_rng(1).bytes(32), "big")
    far = value ^ ((1 << 200) - 1 ^ ((1 << 16) - 1))  # 184 bits away, last band still shared
    seen: list[tuple[str, int]] = []

    def record(item: DedupeItem, candidate: Candidate) -> dict[str, object] | None:
        seen.append((candidate.result_id, candidate.distance_bits))
        return None

    store.check_and_insert_batch([synthetic_item(f"n{k}", value ^ (1 << (255 - k))) for k in range(5)]
                                 + [synthetic_item("far", far)], record, hamming_radius=64, max_candidates=64)
    seen.clear()
    store.check_and_insert_batch([synthetic_item("q", value)], record, hamming_radius=64, max_candidates=3)
    assert seen == [("n0", 1), ("n1", 1), ("n2", 1)]
