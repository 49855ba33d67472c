"""Dedupe on real layouts: SKY130 cells (toolkit/litho/cells, Apache-2.0) placed in rows, windows moved.

Sparse block-edge clips, contacts along the rails, a copy arriving before its
original, and new drawn content beyond a re-simulation's window move (refused
unless ``windows_are_duplicates``). Prints are a blur-and-threshold of the mask.
"""

from __future__ import annotations

from datetime import UTC, datetime

import cv2
import numpy as np
import pytest

from services.dedupe.core import DedupeCore, DedupeSettings
from services.dedupe.store_memory import InMemoryDedupeStore
from shared.contracts import DuplicateRecord, SimResult, UniqueResult
from shared.imageref import make_image_ref
from shared.imaging import to_uint8
from shared.verification import strip_features, verify_window_match
from toolkit.litho import Layout, rasterize
from toolkit.litho.cell_rows import SKY130_HD_DIR, LayerSpec, place_rows, placed_layout, read_cell, row_cells

NM_PER_PX = 4.0
SIZE_PX = 256
WINDOW_NM = SIZE_PX * NM_PER_PX


class Rows:
    """Twenty SKY130 cells abutted in rows, on the li1, licon and mcon layers."""

    def __init__(self) -> None:
        specs = [LayerSpec.parse(t) for t in ("li1=67/20", "licon=66/44", "mcon=67/44")]
        files = sorted(SKY130_HD_DIR.glob("*.gds"))[::20][:20]
        cells, _ = row_cells([read_cell(p, specs, 0.37) for p in files])
        self.placements = place_rows(cells, 8192.0, np.random.default_rng(0))
        self.row_height = self.placements[0].cell.height_nm
        self.row_end = max(p.x_nm + p.cell.width_nm for p in self.placements if p.y_nm == 0.0)
        self.layouts = {name: placed_layout(self.placements, name, name) for name in ("li1", "licon", "mcon")}

    def window_y(self) -> float:
        return (self.row_height - WINDOW_NM) / 2.0

    def clip(
        self, layer: str, origin: tuple[float, float], shift: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        layout: Layout = self.layouts[layer]
        at = (origin[0] + shift[0] * NM_PER_PX, origin[1] + shift[1] * NM_PER_PX)
        pad = 24
        big = rasterize(
            layout, (at[0] - pad * NM_PER_PX, at[1] - pad * NM_PER_PX), SIZE_PX + 2 * pad, NM_PER_PX
        )
        printed = (cv2.GaussianBlur(big, (0, 0), 3.0) > 0.45).astype(np.float32)
        inner = slice(pad, pad + SIZE_PX)
        return big[inner, inner].copy(), printed[inner, inner].copy()


@pytest.fixture(scope="module")
def rows() -> Rows:
    return Rows()


def _result(result_id: str, mask: np.ndarray, printed: np.ndarray) -> SimResult:
    return SimResult(
        result_id=result_id,
        nm_per_px=NM_PER_PX,
        mask=make_image_ref(mask, "png"),
        simulated=make_image_ref(printed, "png"),
        labels={},
        produced_at=datetime.now(UTC),
    )


def test_sparse_block_edge_clip_matches_its_moved_copy(rows: Rows) -> None:
    origin = (rows.row_end - 0.08 * WINDOW_NM, rows.window_y())  # the row's end: a few percent drawn
    mask_a, print_a = rows.clip("licon", origin, (0, 0))
    mask_b, print_b = rows.clip("licon", origin, (-6, 9))
    assert 0.002 < float(mask_a.mean()) < 0.1
    match = verify_window_match(
        to_uint8(mask_a), print_a > 0.5, to_uint8(mask_b), print_b > 0.5, DedupeSettings().tolerances(), 4, 16
    )
    assert match is not None
    assert match.shift_px == (-6, 9)


def test_contacts_along_the_rails_match_a_copy_moved_across_them(rows: Rows) -> None:
    origin = (2 * WINDOW_NM, rows.window_y())
    mask_a, print_a = rows.clip("mcon", origin, (0, 0))
    mask_b, print_b = rows.clip("mcon", origin, (5, -13))
    match = verify_window_match(
        to_uint8(mask_a), print_a > 0.5, to_uint8(mask_b), print_b > 0.5, DedupeSettings().tolerances(), 4, 16
    )
    assert match is not None
    assert match.shift_px == (5, -13)


def test_a_copy_arriving_before_its_original_is_found_and_says_what_was_compared(rows: Rows) -> None:
    origin = (WINDOW_NM, rows.window_y())
    core = DedupeCore(InMemoryDedupeStore())
    copy = _result("copy", *rows.clip("licon", origin, (11, -4)))
    original = _result("original", *rows.clip("licon", origin, (0, 0)))
    first, second = core.process_batch([copy]) + core.process_batch([original])
    assert isinstance(first, UniqueResult)
    assert isinstance(second, DuplicateRecord) and second.duplicate_of == "copy"
    assert second.details["shift_px"] == [-11, 4]
    assert 0.9 < second.details["compared_fraction"] < 1.0
    assert second.details["drawn_compared_fraction"] > 0.5


def _far_pair(rows: Rows) -> tuple[SimResult, SimResult]:
    """A window and one moved 28 px along the row, whose strip shows a whole new feature beyond 16 px."""
    for i in range(6):
        origin = (i * WINDOW_NM, rows.window_y())
        a = rows.clip("licon", origin, (0, 0))
        b = rows.clip("licon", origin, (28, 0))
        if strip_features(to_uint8(a[0]), to_uint8(b[0]), (28, 0), None, 16).total_px > 50:
            return _result("a", *a), _result("b", *b)
    raise AssertionError("no window with new content in its strip")


def test_new_content_beyond_the_window_move_keeps_a_result_unique(rows: Rows) -> None:
    first, second = _far_pair(rows)
    strict = DedupeCore(InMemoryDedupeStore())
    outcomes = strict.process_batch([first]) + strict.process_batch([second])
    assert [type(o) for o in outcomes] == [UniqueResult, UniqueResult]


def test_the_setting_makes_every_window_of_one_layout_a_duplicate(rows: Rows) -> None:
    first, second = _far_pair(rows)
    lenient = DedupeCore(InMemoryDedupeStore(), DedupeSettings(windows_are_duplicates=True))
    outcome = (lenient.process_batch([first]) + lenient.process_batch([second]))[1]
    assert isinstance(outcome, DuplicateRecord) and outcome.duplicate_of == "a"
    assert outcome.details["shift_px"] == [28, 0]
    assert sum(outcome.details["strip_new_px"]) > 0
    assert outcome.details["compared_fraction"] == pytest.approx((256 - 28) / 256, abs=1e-3)


def _opposite_copies(rows: Rows) -> tuple[SimResult, SimResult, SimResult]:
    """Two re-simulations moved 14 px either way along the row (28 px apart, each showing the other a whole
    new feature beyond 16 px) and their original."""
    for i in range(6):
        origin = (i * WINDOW_NM, rows.window_y())
        left, right = rows.clip("licon", origin, (-14, 0)), rows.clip("licon", origin, (14, 0))
        if strip_features(to_uint8(right[0]), to_uint8(left[0]), (-28, 0), None, 16).total_px > 50:
            return (_result("left", *left).model_copy(update={"job_id": "job-7", "clip_id": "clip-3"}),
                    _result("right", *right), _result("original", *rows.clip("licon", origin, (0, 0))))
    raise AssertionError("no window whose copies show each other new content")


def test_an_original_arriving_after_two_copies_moved_apart_makes_the_unmatched_one_a_late_duplicate(
    rows: Rows,
) -> None:
    left, right, original = _opposite_copies(rows)
    core = DedupeCore(InMemoryDedupeStore())
    first = core.decide_batch([left])[0]
    second = core.decide_batch([right])[0]
    assert isinstance(first.outcome, UniqueResult) and isinstance(second.outcome, UniqueResult)
    (third,) = core.decide_batch([original])
    assert isinstance(third.outcome, DuplicateRecord)
    kept = third.outcome.duplicate_of
    other = "right" if kept == "left" else "left"
    assert third.outcome.details["late_duplicates"] == [other]
    (late,) = third.late
    assert late.record.result_id == other and late.record.duplicate_of == "original"
    assert late.record.details["late"] is True and late.record.details["bridged_by"] == "original"
    assert late.record.details["strip_new_px"] == [0, 0]
    expected = left if other == "left" else right
    assert late.record.produced_at == expected.produced_at
    assert (late.job_id, late.clip_id) == ((expected.job_id, expected.clip_id))
    # a redelivery of the original repeats the late record; one of the late duplicate is now a duplicate
    (again,) = core.decide_batch([original])
    assert [d.record.result_id for d in again.late] == [other]
    redelivered = core.process_batch([expected])[0]
    assert isinstance(redelivered, DuplicateRecord) and redelivered.duplicate_of == "original"


def test_copies_and_their_original_in_one_batch_end_with_one_result_kept(rows: Rows) -> None:
    left, right, original = _opposite_copies(rows)
    decisions = DedupeCore(InMemoryDedupeStore()).decide_batch([left, right, original])
    outcomes = [d.outcome for d in decisions]
    assert sum(isinstance(o, UniqueResult) for o in outcomes) == 1
    assert all(not d.late for d in decisions)  # decided before anything was produced


def test_without_bridges_the_copy_moved_the_other_way_stays_unique(rows: Rows) -> None:
    left, right, original = _opposite_copies(rows)
    core = DedupeCore(InMemoryDedupeStore(), DedupeSettings(bridge_candidates=0))
    decisions = [core.decide_batch([r])[0] for r in (left, right, original)]
    kinds = [type(d.outcome).__name__ for d in decisions]
    assert kinds == ["UniqueResult", "UniqueResult", "DuplicateRecord"]
    assert not decisions[2].late


def test_the_stage_produces_a_late_duplicate_record_and_verdict_with_the_bridging_result(rows: Rows) -> None:
    from services.dedupe.stage import DedupeStage
    from shared.contracts import Topics, VerdictRecord
    from shared.stage import Output

    left, right, original = _opposite_copies(rows)
    stage = DedupeStage(DedupeCore(InMemoryDedupeStore()))
    stage.process_batch([left])
    stage.process_batch([right])
    (outputs,) = stage.process_batch([original])
    assert isinstance(outputs, list) and all(isinstance(o, Output) for o in outputs)
    topics = [(o.topic, o.key) for o in outputs]
    record = outputs[0].value
    assert isinstance(record, DuplicateRecord)
    kept = record.duplicate_of
    other = "right" if kept == "left" else "left"
    assert topics == [(Topics.DUPLICATES, "original"), (Topics.VERDICTS, "original"),
                      (Topics.DUPLICATES, other), (Topics.VERDICTS, other)]
    verdict = outputs[3].value
    assert isinstance(verdict, VerdictRecord)
    assert verdict.outcome == "duplicate" and verdict.duplicate_of == "original"
    assert verdict.job_id == ("job-7" if other == "left" else "")
