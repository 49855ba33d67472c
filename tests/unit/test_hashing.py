"""Known-answer tests of the exact digest and the shift-robust spectral hash."""

from __future__ import annotations

import numpy as np
import pytest

from shared.errors import ImageError
from shared.hashing import (
    SPECTRAL_BITS,
    band_probes,
    centred_spectral_hash,
    exact_digest,
    hamming_distance,
    hash_from_hex,
    profile_distances,
    profile_signature,
    spectral_features,
    spectral_hash,
    split_bands,
)
from shared.imaging import decode_image, encode_npy, encode_png
from toolkit.litho import FAMILIES, Layout, generate_layout, rasterize

RADIUS = 64  # DedupeSettings.hamming_radius
N_BANDS = 16
NM_PER_PX = 4.0
BASE_NM = 512.0
SHIFTS_PX = [(16, 0), (0, 16), (16, 16), (-16, 8), (5, -11), (-16, -16)]


def window(layout: Layout, shift_px: tuple[int, int] = (0, 0)) -> np.ndarray:
    origin = (BASE_NM + shift_px[0] * NM_PER_PX, BASE_NM + shift_px[1] * NM_PER_PX)
    return rasterize(layout, origin, 256, NM_PER_PX)


def grating(pitch_nm: float, width_nm: float, offset_nm: float = 0.0) -> Layout:
    xs = np.arange(offset_nm, 2048.0, pitch_nm)
    rects = np.stack([xs, np.zeros_like(xs), xs + width_nm, np.full_like(xs, 2048.0)], axis=1)
    return Layout(rects, 2048.0, "grating")


def found_by_probes(stored: int, query_image: np.ndarray) -> bool:
    query = spectral_hash(query_image)
    bands = set(enumerate(split_bands(stored, SPECTRAL_BITS, N_BANDS)))
    return bool(bands & set(band_probes(query, N_BANDS, 2)))


def test_shifted_windows_of_one_layout_stay_close_and_are_found() -> None:
    """Same layout, window moved by up to 16 px per axis: within the radius and found by the
    band probes. Not every time: on 2,000 farm duplicates 99.95 % are within the radius and
    99.6 % are found (bench/dedupe_bench.py); here one routing window moved by (-16, -16)
    px sits at 74 bits. Distinct layouts of other families sit at 126 bits (median)."""
    within = found = total = 0
    distances = []
    for family in FAMILIES:
        layout = generate_layout(family, np.random.default_rng(1234 + FAMILIES.index(family)))
        base = spectral_hash(window(layout)).value
        for shift in SHIFTS_PX:
            shifted = window(layout, shift)
            distance = hamming_distance(base, spectral_hash(shifted).value)
            distances.append(distance)
            within += distance <= RADIUS
            found += found_by_probes(base, shifted)
            total += 1
    assert within >= total - 1 and found >= total - 2
    assert np.median(distances) <= 32


def test_plain_window_pixels_move_a_lot_under_the_same_shifts() -> None:
    """The reason for the spectral hash: a 16 px shift changes most pixels of a dense clip."""
    layout = generate_layout("routing", np.random.default_rng(7))
    a, b = window(layout), window(layout, (16, 0))
    assert np.mean(np.abs(a - b) > 0.5) > 0.2


def test_reencoding_does_not_move_the_hash() -> None:
    mask = window(generate_layout("shapes", np.random.default_rng(3)))
    reference = spectral_hash(mask).value
    for data in (encode_png(mask, 8), encode_png(mask, 16), encode_npy(mask)):
        assert hamming_distance(reference, spectral_hash(decode_image(data)).value) <= 8


def test_distinct_layouts_of_one_family_are_outside_the_radius() -> None:
    pairs = [
        (grating(120.0, 60.0), grating(180.0, 80.0)),
        (grating(200.0, 90.0), grating(140.0, 90.0)),
    ]
    rng = np.random.default_rng(11)
    for family in ("contacts", "routing", "sram", "shapes"):
        pairs.append((generate_layout(family, rng), generate_layout(family, rng)))
    for a, b in pairs:
        assert hamming_distance(spectral_hash(window(a)).value, spectral_hash(window(b)).value) > RADIUS


def test_exact_digest_ignores_the_encoding_but_not_the_pixels() -> None:
    layout = generate_layout("line_ends", np.random.default_rng(5))
    mask = window(layout)
    printed = (mask > 0.5).astype(np.float32)
    digest = exact_digest(mask, printed)
    for data in (encode_png(mask, 8), encode_npy(mask)):
        assert exact_digest(decode_image(data), decode_image(encode_png(printed, 8))) == digest
    changed = printed.copy()
    changed[100, 100] = 1.0 - changed[100, 100]
    assert exact_digest(mask, changed) != digest
    assert exact_digest(printed, mask) != digest  # mask and print are not interchangeable


def test_hash_is_a_fixed_width_bit_string_with_margins() -> None:
    h = spectral_hash(window(grating(150.0, 70.0)))
    assert h.bits == SPECTRAL_BITS and len(h.hex()) == SPECTRAL_BITS // 4
    assert h.margins.shape == (SPECTRAL_BITS,) and (h.margins >= 0).all()
    assert hash_from_hex(h.kind, h.hex()).value == h.value
    assert spectral_features(window(grating(150.0, 70.0))).shape == (512,)


def test_blank_and_other_sizes_are_handled() -> None:
    assert spectral_hash(np.zeros((256, 256), np.float32)).value == 0
    small = window(grating(150.0, 70.0))[::2, ::2]
    assert spectral_hash(small).bits == SPECTRAL_BITS
    with pytest.raises(ImageError):
        spectral_hash(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError):
        spectral_hash(np.full((16, 16), np.nan, np.float32))


def test_bands_obey_the_pigeonhole_principle() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = int.from_bytes(rng.bytes(SPECTRAL_BITS // 8), "big")
        flips = rng.choice(SPECTRAL_BITS, size=N_BANDS - 1, replace=False)
        b = a
        for bit in flips:
            b ^= 1 << int(bit)
        assert hamming_distance(a, b) == N_BANDS - 1
        shared = [x == y for x, y in zip(split_bands(a, SPECTRAL_BITS, N_BANDS),
                                         split_bands(b, SPECTRAL_BITS, N_BANDS), strict=True)]
        assert any(shared)


def test_probes_flip_the_least_reliable_bits_of_each_band() -> None:
    h = spectral_hash(window(generate_layout("contacts", np.random.default_rng(2))))
    probes = band_probes(h, N_BANDS, 2)
    assert len(probes) == 3 * N_BANDS
    bands = split_bands(h.value, h.bits, N_BANDS)
    width = h.bits // N_BANDS
    for j in range(N_BANDS):
        mine = [value for band, value in probes if band == j]
        assert mine[0] == bands[j]
        weakest = np.argsort(h.margins[j * width:(j + 1) * width], kind="stable")[:2]
        assert mine[1:] == [bands[j] ^ (1 << (width - 1 - int(bit))) for bit in weakest]
    with pytest.raises(ValueError):
        split_bands(h.value, h.bits, 7)


def test_centred_hash_ignores_where_a_sparse_clip_sits_in_its_window() -> None:
    clip = np.zeros((256, 256), dtype=np.float32)
    for x in range(20, 100, 30):  # three contacts and a line near the border, nothing crossing it
        clip[12:28, x:x + 16] = 1.0
    clip[40:44, 10:120] = 1.0
    moved = np.roll(np.roll(clip, 90, axis=0), 70, axis=1)  # the window moved: same content elsewhere
    assert centred_spectral_hash(clip).value == centred_spectral_hash(moved).value
    assert hamming_distance(spectral_hash(clip).value, spectral_hash(moved).value) > 0


def test_profiles_of_a_moved_window_lie_nearer_than_other_layouts() -> None:
    """A window moved by up to 16 px keeps its row and column profiles up to a shift; the profile
    distance ranks it before windows of other layouts."""
    rng = np.random.default_rng(7)
    layouts = [generate_layout(family, rng) for family in FAMILIES for _ in range(3)]
    base = layouts[0]
    query = profile_signature(window(base, (9, -13)))
    pool = [profile_signature(window(base))] + [profile_signature(window(other)) for other in layouts[1:]]
    assert len(query) == 128
    distances = profile_distances(query, pool)
    assert int(np.argmin(distances)) == 0
    assert profile_distances(query, [query])[0] == 0.0
    assert profile_distances(query, []).size == 0
    with pytest.raises(ValueError):
        profile_distances(query, [b"short"])
