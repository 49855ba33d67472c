"""The dedupe core with the in-memory store: exact, near and no duplicates, redelivery."""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np
import pytest

from services.dedupe.core import DedupeCore, DedupeSettings, decode_payload, encode_payload
from services.dedupe.store import Candidate, DedupeItem, Ranker, Verdict, _Lookup
from services.dedupe.store_memory import InMemoryDedupeStore
from shared.contracts import DuplicateRecord, ImageRef, SimResult, UniqueResult
from shared.errors import ConfigError, ImageError, InputError
from shared.hashing import PROFILE_BYTES, hamming_distance, spectral_hash, split_bands
from shared.imageref import make_image_ref
from shared.imaging import ImageFormat, sha256_hex, to_uint8
from shared.verification import verify_shifted_match
from toolkit.litho import Layout, generate_layout, rasterize

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
    assert first[0].hashes.exact and set(first[0].hashes.perceptual) == {"spectral-v1", "spectral-centred-v1"}
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
    settings = DedupeSettings().tolerances()
    match = verify_shifted_match(to_uint8(mask), printed > 0.5, to_uint8(mask_b), printed_b > 0.5, settings)
    assert match is not None and match.shift_px == (10, -6)
    assert match.details() == {"shift_px": [10, -6], "mask_mismatch_px": match.mask_mismatch_px,
                               "print_mismatch_px": match.prints.mismatch_px}
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
    probed = [store.members("test", band, v) for band, v in synthetic_item("c", value ^ 3).probes]
    members = set().union(*probed)
    assert b"a" not in {m[36:] for m in members}  # removed when met
    assert b"b" in {m[36:] for m in members}


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


# -- one result id, one content; verdicts written once; bounded band sets ------------------------


def test_a_reused_result_id_with_other_pixels_is_refused_redelivery_replays(core: DedupeCore) -> None:
    first, other = Canvas(layout("routing", 30)), Canvas(layout("contacts", 31))
    assert isinstance(core.process_batch([result("job-1", *first.window())])[0], UniqueResult)
    (reused,) = core.process_batch([result("job-1", *other.window())])
    assert isinstance(reused, InputError) and reused.reason == "result_id_reused"
    (again,) = core.process_batch([result("job-1", *first.window())])  # a redelivery of the original
    assert isinstance(again, UniqueResult)
    # the refused pixels were not claimed by "job-1": their first real owner is unique, not its copy
    (fresh,) = core.process_batch([result("job-2", *other.window())])
    assert isinstance(fresh, UniqueResult)
    (copy,) = core.process_batch([result("job-3", *other.window())])
    assert isinstance(copy, DuplicateRecord) and (copy.method, copy.duplicate_of) == ("exact", "job-2")


def test_a_reused_result_id_within_one_batch_is_refused(core: DedupeCore) -> None:
    a, b = Canvas(layout("sram", 32)).window(), Canvas(layout("shapes", 33)).window()
    outcomes = core.process_batch([result("same", *a), result("same", *b), result("same", *a)])
    assert isinstance(outcomes[0], UniqueResult) and isinstance(outcomes[2], UniqueResult)
    assert isinstance(outcomes[1], InputError) and outcomes[1].reason == "result_id_reused"


def test_a_verdict_stored_before_digests_were_recorded_is_replayed() -> None:
    store = InMemoryDedupeStore()
    store._set("v:old", '{"status": "exact", "duplicate_of": "first", "distance_bits": 0, "details": {}}')
    (verdict,) = store.check_and_insert_batch([synthetic_item("old", 1 << 200)], lambda i, c: None,
                                              hamming_radius=8, max_candidates=4)
    assert (verdict.status, verdict.duplicate_of, verdict.replayed) == ("exact", "first", True)


class RacingStore(InMemoryDedupeStore):
    """Another replica writes its verdict for the same result between this one's lookup and commit."""

    def __init__(self, rival_verdict: str) -> None:
        super().__init__()
        self.rival_verdict = rival_verdict

    def _lookup(self, items: Sequence[DedupeItem]) -> list[_Lookup]:
        found = super()._lookup(items)
        for item in items:
            self._set(f"v:{item.result_id}", self.rival_verdict)
        return found


def test_racing_replicas_keep_the_first_verdict_written() -> None:
    item = synthetic_item("raced", 5 << 100)
    rival = Verdict("raced", "perceptual", "elder", 3, {"shift_px": [1, 0]}, exact_digest=item.exact_digest)
    store = RacingStore(rival.to_json())
    (verdict,) = store.check_and_insert_batch([item], lambda i, c: None, hamming_radius=8, max_candidates=4)
    assert (verdict.status, verdict.duplicate_of, verdict.replayed) == ("perceptual", "elder", True)
    assert store._get("v:raced") == rival.to_json()  # not overwritten (SET NX)
    other_pixels = replace(rival, exact_digest="another-digest")
    (refused,) = RacingStore(other_pixels.to_json()).check_and_insert_batch(
        [item], lambda i, c: None, hamming_radius=8, max_candidates=4)
    assert refused.status == "reused"


def test_a_busy_band_set_stays_bounded_and_keeps_its_newest_members() -> None:
    now = [5000.0]
    trimmed: list[int] = []
    store = InMemoryDedupeStore(ttl_seconds=1000.0, clock=lambda: now[0], band_max_members=8,
                                on_trimmed=trimmed.append)
    value = int.from_bytes(np.random.default_rng(3).bytes(32), "big")
    offered: list[str] = []

    def record(item: DedupeItem, candidate: Candidate) -> dict[str, object] | None:
        offered.append(candidate.result_id)
        return None

    for k in range(40):  # 40 results whose hashes share every band but the last one's low bits
        now[0] += 1.0
        store.check_and_insert_batch([synthetic_item(f"m{k:02d}", value ^ k)], record, hamming_radius=64,
                                     max_candidates=64)
    bands = split_bands(value, 256, 16)
    sizes = [len(store.members("test", band, v)) for band, v in enumerate(bands[:15])]
    assert sizes == [8] * 15
    assert sum(trimmed) == 15 * (40 - 8)
    assert set(store.members("test", 0, bands[0])) == {
        synthetic_item(f"m{k:02d}", value ^ k).member(5001.0 + k) for k in range(32, 40)}
    offered.clear()
    store.check_and_insert_batch([synthetic_item("q", value)], record, hamming_radius=64, max_candidates=64)
    # the newest 8 of the full sets; "m00" shares the last band with "q" exactly, alone in its set
    assert set(offered) == {"m00", *(f"m{k:02d}" for k in range(32, 40))}


def test_band_set_expiry_is_written_once_per_ttl_window_and_covers_every_member() -> None:
    now = [0.0]
    store = InMemoryDedupeStore(ttl_seconds=100.0, clock=lambda: now[0])
    value = int.from_bytes(np.random.default_rng(4).bytes(32), "big")
    band0 = split_bands(value, 256, 16)[0]

    def add(rid: str, flip: int) -> None:
        store.check_and_insert_batch([synthetic_item(rid, value ^ flip)], lambda i, c: None,
                                     hamming_radius=0, max_candidates=1)

    add("a", 1)
    assert store.expires_at("test", 0, band0) == 200.0  # new: the end of the next window
    now[0] = 90.0
    add("b", 2)
    assert store.expires_at("test", 0, band0) == 200.0  # same window: not written again
    now[0] = 150.0
    add("c", 4)
    assert store.expires_at("test", 0, band0) == 300.0  # a new window: written once
    assert {m[36:] for m in store.members("test", 0, band0)} == {b"b", b"c"}  # "a" was stale when met
    now[0] = 299.0  # "c" (added at 150) is kept past its TTL: the set expires only at 300
    assert {m[36:] for m in store.members("test", 0, band0)} == {b"b", b"c"}
    now[0] = 300.0
    assert not store.members("test", 0, band0)


def test_a_near_duplicate_is_kept_as_a_candidate_for_later_results() -> None:
    """A re-simulation moved one way (b, a duplicate of a) is what one moved further that way (c)
    matches, when the pixels say c is not a's."""
    store = InMemoryDedupeStore()
    value = int.from_bytes(np.random.default_rng(2).bytes(32), "big")
    accepts = {"b": {"a"}, "c": {"b"}}  # which earlier results each one's pixels match

    def verify(item: DedupeItem, candidate: Candidate) -> dict[str, object] | None:
        return {"ok": 1} if candidate.result_id in accepts.get(item.result_id, set()) else None

    verdicts = [store.check_and_insert_batch([synthetic_item(rid, value ^ k)], verify, hamming_radius=8,
                                             max_candidates=4)[0] for k, rid in enumerate("abc")]
    assert [(v.status, v.duplicate_of) for v in verdicts] == [
        ("unique", None), ("perceptual", "a"), ("perceptual", "b")]


def test_two_part_items_measure_the_nearer_part() -> None:
    near, far = 3, (1 << 256) - 1
    item = replace(synthetic_item("x", 0), perceptual=0, perceptual_bits=512, parts=2)
    assert item.distance_bits((far << 256) | near) == 2
    assert item.distance_bits((near << 256) | far) == 2
    assert item.distance_bits((far << 256) | far) == 256


def _profiled_item(result_id: str, value: int, level: int) -> DedupeItem:
    """An item with a flat profile at ``level``: its profile distance to another grows with the gap."""
    return replace(synthetic_item(result_id, value), profile=bytes([level]) * PROFILE_BYTES)


def test_the_profile_shortlist_is_ranked_and_only_the_best_are_verified() -> None:
    rng = np.random.default_rng(3)
    stored = [_profiled_item(f"s{k}", int.from_bytes(rng.bytes(32), "big"), 100 + 5 * k) for k in range(30)]
    query = _profiled_item("q", int.from_bytes(rng.bytes(32), "big"), 100)  # no band shared with any

    def decide(rank: Ranker | None, shortlist: int) -> tuple[Verdict, list[str]]:
        store = InMemoryDedupeStore()
        store.check_and_insert_batch(stored, lambda i, c: None, hamming_radius=0, max_candidates=1)
        offered: list[str] = []

        def only_s20(item: DedupeItem, candidate: Candidate) -> dict[str, object] | None:
            offered.append(candidate.result_id)
            return {"ok": 1} if candidate.result_id == "s20" else None

        (verdict,) = store.check_and_insert_batch([query], only_s20, hamming_radius=0, max_candidates=1,
                                                  profile_candidates=4, profile_shortlist=shortlist,
                                                  rank=rank)
        return verdict, offered

    def s20_first(item: DedupeItem, candidates: Sequence[Candidate]) -> list[float]:
        return [0.0 if c.result_id == "s20" else 1.0 for c in candidates]

    # nearest by profile: s0..s3 are verified, s20 (21st by profile) is never offered
    verdict, offered = decide(None, 48)
    assert verdict.status == "unique" and offered == ["s0", "s1", "s2", "s3"]
    # ranked: the 24 nearest by profile are read, s20 is put first and matched
    verdict, offered = decide(s20_first, 24)
    assert (verdict.status, verdict.duplicate_of, offered) == ("perceptual", "s20", ["s20"])
    # a shortlist too short to hold it: the four best of those read are verified, in rank order (ties kept)
    verdict, offered = decide(s20_first, 16)
    assert verdict.status == "unique" and offered == ["s0", "s1", "s2", "s3"]


def test_a_candidate_ranked_as_unable_to_match_is_not_verified() -> None:
    stored = [_profiled_item(f"s{k}", k + 1, 100 + 5 * k) for k in range(6)]
    query = _profiled_item("q", 2**200, 100)  # no band shared with any
    store = InMemoryDedupeStore()
    store.check_and_insert_batch(stored, lambda i, c: None, hamming_radius=0, max_candidates=1)
    offered: list[str] = []

    def none_match(item: DedupeItem, candidate: Candidate) -> dict[str, object] | None:
        offered.append(candidate.result_id)
        return None

    def only_even(item: DedupeItem, candidates: Sequence[Candidate]) -> list[float]:
        return [float(c.result_id[1:]) if int(c.result_id[1:]) % 2 == 0 else math.inf for c in candidates]

    (verdict,) = store.check_and_insert_batch([query], none_match, hamming_radius=0, max_candidates=1,
                                              profile_candidates=4, profile_shortlist=6, rank=only_even)
    assert verdict.status == "unique" and offered == ["s0", "s2", "s4"]


def test_the_coarse_gate_skips_the_pixel_checks_of_other_layouts_and_keeps_every_duplicate() -> None:
    """Distinct layouts of one family: without the gate each unique result is checked on pixels against
    the profile candidates; with it, only against those whose coarse score could be a window of its
    layout. The moved windows are found either way."""
    canvases = [Canvas(layout("contacts", seed)) for seed in range(8)]
    results = [result(f"o{k}", *canvas.window()) for k, canvas in enumerate(canvases)]
    results += [result(f"m{k}", *canvas.window((k + 3, -2 * k - 1), dose=1.02))
                for k, canvas in enumerate(canvases)]

    def run(gate: bool) -> tuple[list[str | None], int]:
        core = DedupeCore(InMemoryDedupeStore(), DedupeSettings(coarse_gate=gate))
        checks = 0
        verify_pair = core.verify_pair

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal checks
            checks += 1
            return verify_pair(*args, **kwargs)

        core.verify_pair = counted  # type: ignore[method-assign]
        outcomes = [outcome for r in results for outcome in core.process_batch([r])]
        return [o.duplicate_of if isinstance(o, DuplicateRecord) else None for o in outcomes], checks

    gated, gated_checks = run(True)
    every, every_checks = run(False)
    assert gated == every == [None] * 8 + [f"o{k}" for k in range(8)]
    assert 4 * gated_checks < every_checks
