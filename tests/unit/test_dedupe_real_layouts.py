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
