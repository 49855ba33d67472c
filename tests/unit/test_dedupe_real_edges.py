"""Dedupe on real block-edge clips: found by row and column profile, registered at one shift.

SKY130 cells (toolkit/litho/cells, Apache-2.0) placed in rows as the real-layout
dedupe bench places them; windows at the end of a row show a few percent of the
last cell and the rails crossing the window. A 9 px window move there brings in or
takes out so much of what the clip shows that both spectral hashes move by more
than the lookup radius; the store's newest results ranked by profile find the
original. Such a candidate must register at one shift: a lone rail agrees at every
shift along itself, and two different row ends then look like one window moved.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

import cv2
import numpy as np
import pytest

from services.dedupe.core import DedupeCore, DedupeSettings
from services.dedupe.store_memory import InMemoryDedupeStore
from shared.contracts import DuplicateRecord, SimResult, UniqueResult
from shared.imageref import make_image_ref
from shared.imaging import to_uint8
from shared.verification import verify_window_match
from toolkit.litho import Layout, rasterize
from toolkit.litho.cell_rows import (
    SKY130_HD_DIR,
    LayerSpec,
    Placement,
    place_rows,
    placed_layout,
    read_cell,
    row_cells,
)

NM_PER_PX = 4.0
SIZE_PX = 256


@lru_cache(maxsize=1)
def _placements() -> tuple[Placement, ...]:
    """Every cell of the library in rows 16.4 um wide, shrink 0.37, as the bench places them (seed 0)."""
    specs = [LayerSpec.parse(text) for text in ("li1=67/20", "licon=66/44", "mcon=67/44")]
    cells, _ = row_cells([read_cell(path, specs, 0.37) for path in sorted(SKY130_HD_DIR.glob("*.gds"))])
    return tuple(place_rows(cells, 16384.0, np.random.default_rng(0)))


@lru_cache(maxsize=3)
def _layout(layer: str) -> Layout:
    return placed_layout(list(_placements()), layer, layer)


def _clip(layer: str, at: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    pad = 24
    corner = (at[0] - pad * NM_PER_PX, at[1] - pad * NM_PER_PX)
    big = rasterize(_layout(layer), corner, SIZE_PX + 2 * pad, NM_PER_PX)
    printed = (cv2.GaussianBlur(big, (0, 0), 3.0) > 0.45).astype(np.float32)
    inner = slice(pad, pad + SIZE_PX)
    return big[inner, inner].copy(), printed[inner, inner].copy()


def _result(result_id: str, layer: str, at: tuple[float, float]) -> SimResult:
    mask, printed = _clip(layer, at)
    return SimResult(result_id=result_id, nm_per_px=NM_PER_PX, mask=make_image_ref(mask, "png"),
                     simulated=make_image_ref(printed, "png"), labels={}, produced_at=datetime.now(UTC))


def _run(settings: DedupeSettings, *results: SimResult) -> list[object]:
    core = DedupeCore(InMemoryDedupeStore(), settings)
    return [outcome for result in results for outcome in core.process_batch([result])]


@pytest.fixture(scope="module")
def row_end() -> tuple[SimResult, SimResult]:
    """A li1 block-edge window and the same window moved (2, -9) px."""
    return _result("original", "li1", (15236.08, 25151.2)), _result("copy", "li1", (15244.08, 25115.2))


def test_a_block_edge_copy_is_out_of_reach_of_both_hashes(row_end: tuple[SimResult, SimResult]) -> None:
    core = DedupeCore(InMemoryDedupeStore())
    original, copy = (core.prepare(r).item for r in row_end)
    assert copy.distance_bits(original.perceptual) > DedupeSettings().hamming_radius
    outcomes = _run(DedupeSettings(profile_candidates=0), *row_end)
    assert isinstance(outcomes[1], UniqueResult)


def test_a_block_edge_copy_is_found_by_profile(row_end: tuple[SimResult, SimResult]) -> None:
    outcomes = _run(DedupeSettings(), *row_end)
    copy = outcomes[1]
    assert isinstance(copy, DuplicateRecord) and copy.duplicate_of == "original"
    assert copy.details["found_by"] == "profile"
    assert copy.details["shift_px"] == [2, -9]


def test_two_row_ends_that_agree_only_on_a_rail_stay_apart() -> None:
    # one row end shows a rail and what lies beyond it, the other the rails and the last cell's edge
    a, b = _clip("li1", (13087.48, 30219.2)), _clip("li1", (11832.08, 36221.6))
    tolerances = DedupeSettings().tolerances()
    args = (to_uint8(a[0]), a[1] > 0.5, to_uint8(b[0]), b[1] > 0.5, tolerances, 4, 16)
    # pixels alone cannot tell: everything but the rail lies within a 16 px move of the overlap
    assert verify_window_match(*args) is not None
    assert verify_window_match(*args, unique_shift=True) is None
    outcomes = _run(DedupeSettings(), _result("a", "li1", (13087.48, 30219.2)),
                    _result("b", "li1", (11832.08, 36221.6)))
    assert [type(o) for o in outcomes] == [UniqueResult, UniqueResult]


def test_two_row_ends_that_share_only_a_cut_corner_stay_apart() -> None:
    # two li1 row ends of different rows: one shows the corner of a shape cut by the window's top and left
    # edges and a bar along its bottom, the other a shape with that corner lower down and a bar along its
    # left edge.
    # Moved (6, 10) px, each bar lies within the move of the overlap, so the pixels are a window move's;
    # 96 drawn pixels, under a tenth of one clip's drawn area, are all that is compared.
    a, b = ("a", "li1", (13736.28, -72.8)), ("b", "li1", (15802.68, 42236.0))
    parted = _run(DedupeSettings(), _result(*a), _result(*b))
    assert [type(o) for o in parted] == [UniqueResult, UniqueResult]
    # without the rule on thin profile matches they merge, unless a floor on every profile match parts them
    merged = _run(DedupeSettings(profile_thin_match_px=0), _result(*a), _result(*b))[1]
    assert isinstance(merged, DuplicateRecord) and merged.details["found_by"] == "profile"
    assert merged.details["shift_px"] == [6, 10] and merged.details["matched_drawn_px"] == 96
    assert float(merged.details["drawn_compared_fraction"]) < 0.1
    floored = _run(DedupeSettings(profile_thin_match_px=0, profile_min_matched_px=100), _result(*a),
                   _result(*b))
    assert [type(o) for o in floored] == [UniqueResult, UniqueResult]


def test_a_lone_contact_found_by_profile_is_not_a_thin_match() -> None:
    # an mcon block-edge window showing a few contacts cut by the window's edges (0.2 % of the clip
    # printed) and the same window moved (-13, 13) px: 70 drawn pixels compared, but over a quarter of
    # either clip's drawn area, which the rule on thin matches accepts and a floor of 100 px refuses
    original, moved = ("o", "mcon", (15576.48, 17100.0)), ("m", "mcon", (15524.48, 17152.0))
    found = _run(DedupeSettings(), _result(*original), _result(*moved))[1]
    assert isinstance(found, DuplicateRecord) and found.details["found_by"] == "profile"
    assert found.details["matched_drawn_px"] == 70 and float(found.details["drawn_compared_fraction"]) > 0.25
    floored = _run(DedupeSettings(profile_min_matched_px=100), _result(*original), _result(*moved))
    assert [type(o) for o in floored] == [UniqueResult, UniqueResult]


#: mcon windows of other rows showing rows of contacts along the rails, nearer by profile to the linking
#: window below than its own copy is (window corners in nm, from the dedupe bench's real set, seed 0)
RAIL_ROWS = ((6144.0, 45279.2), (13436.0, 32164.0), (1056.0, 41269.6), (6144.0, 2004.0), (11300.0, 16125.6),
             (5108.0, 27116.0), (5120.0, 27164.0), (7204.0, 53330.4), (7168.0, 53330.4), (7168.0, 57356.0),
             (13312.0, 35215.2), (1024.0, 35215.2), (6188.0, 45215.2), (7168.0, 3010.4), (5152.0, 27100.0),
             (5060.0, 27224.0), (972.0, 41249.6), (8192.0, 7036.0), (1076.0, 18166.4))


@pytest.fixture(scope="module")
def rails_stream() -> list[SimResult]:
    """An mcon window kept, its copy moved 30 px away (no match), 19 rows of contacts of other cells, then
    the original between the two: it matches the kept one and must bridge to the copy."""
    return [_result("kept", "mcon", (2056.0, 35279.2)), _result("opposite", "mcon", (2008.0, 35159.2)),
            *(_result(f"row-{k}", "mcon", at) for k, at in enumerate(RAIL_ROWS)),
            _result("linking", "mcon", (2048.0, 35215.2))]


def test_a_copy_among_look_alike_rows_of_contacts_is_bridged_by_overlap_rank(
        rails_stream: list[SimResult]) -> None:
    def late_of_the_linking_result(settings: DedupeSettings) -> list[str]:
        core = DedupeCore(InMemoryDedupeStore(), settings)
        decisions = [decision for result in rails_stream for decision in core.decide_batch([result])]
        assert isinstance(decisions[1].outcome, UniqueResult)  # 30 px from the kept one
        linking = decisions[-1]
        assert isinstance(linking.outcome, DuplicateRecord) and linking.outcome.duplicate_of == "kept"
        return [late.record.result_id for late in linking.late]

    # nearest by profile first (the previous order), the copy ranks past the 16 bridge candidates
    assert late_of_the_linking_result(DedupeSettings(rank_by_overlap=False)) == []
    # by the coarse score over the whole overlap it ranks among the first four
    assert late_of_the_linking_result(DedupeSettings()) == ["opposite"]
    assert late_of_the_linking_result(DedupeSettings(bridge_candidates=4)) == ["opposite"]


def test_a_copy_whose_move_took_most_of_its_contacts_out_is_judged() -> None:
    # licon contacts at a row end: the copy moved (-13, -5) px shows them whole, the original cut; the
    # overlap holds all of the original's drawn area and under a quarter of the copy's
    original, copy = _clip("licon", (15576.48, 28170.4)), _clip("licon", (15524.48, 28150.4))
    tolerances = DedupeSettings().tolerances()
    args = (to_uint8(original[0]), original[1] > 0.5, to_uint8(copy[0]), copy[1] > 0.5, tolerances)
    match = verify_window_match(*args, 4, 16)
    assert match is not None and match.shift_px == (-13, -5)
    assert match.drawn_compared_fraction < 0.25
    assert match.strip.total_px == 0
    # without the strip check nothing vouches for the uncompared part: the quarter still holds
    assert verify_window_match(*args, None, 16) is None


def test_a_floor_on_what_a_profile_candidate_compares_refuses_thinner_evidence(
    row_end: tuple[SimResult, SimResult],
) -> None:
    found = _run(DedupeSettings(), *row_end)[1]
    assert isinstance(found, DuplicateRecord) and found.details["found_by"] == "profile"
    matched = int(found.details["matched_drawn_px"])
    at_floor = _run(DedupeSettings(profile_min_matched_px=matched), *row_end)[1]
    assert isinstance(at_floor, DuplicateRecord) and at_floor.duplicate_of == "original"
    assert isinstance(_run(DedupeSettings(profile_min_matched_px=matched + 1), *row_end)[1], UniqueResult)


def test_the_service_passes_the_profile_floor_to_the_core() -> None:
    from services.dedupe.main import DedupeServiceSettings

    default = DedupeServiceSettings().core_settings()
    assert (default.profile_min_matched_px, default.profile_thin_match_px) == (0, 128)
    assert (default.rank_by_overlap, default.profile_shortlist) == (True, 48)
    chosen = DedupeServiceSettings(dedupe_profile_min_matched_px=256, dedupe_profile_thin_match_px=0,
                                   dedupe_rank_by_overlap=False, dedupe_profile_shortlist=24).core_settings()
    assert (chosen.profile_min_matched_px, chosen.profile_thin_match_px) == (256, 0)
    assert (chosen.rank_by_overlap, chosen.profile_shortlist) == (False, 24)


def test_an_evidence_floor_on_every_match_keeps_thinner_clips_unique() -> None:
    # a li1 window inside a row and the same window moved (3, -2) px: found by hash, not by profile, so
    # only the floor on every match applies to it
    pair = (_result("original", "li1", (8000.0, 25151.2)), _result("copy", "li1", (8012.0, 25143.2)))
    found = _run(DedupeSettings(), *pair)[1]
    assert isinstance(found, DuplicateRecord) and found.details["found_by"] != "profile"
    matched = int(found.details["matched_drawn_px"])
    assert isinstance(_run(DedupeSettings(profile_min_matched_px=matched + 1), *pair)[1], DuplicateRecord)
    at_floor = _run(DedupeSettings(min_matched_px=matched), *pair)[1]
    assert isinstance(at_floor, DuplicateRecord) and at_floor.duplicate_of == "original"
    assert isinstance(_run(DedupeSettings(min_matched_px=matched + 1), *pair)[1], UniqueResult)


def test_the_service_passes_the_evidence_floor_to_the_core() -> None:
    from services.dedupe.main import DedupeServiceSettings

    assert DedupeServiceSettings().core_settings().min_matched_px == 0
    assert DedupeServiceSettings(dedupe_min_matched_px=1280).core_settings().min_matched_px == 1280
