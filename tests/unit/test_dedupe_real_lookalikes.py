"""Dedupe on real layouts: a re-simulation found among many look-alike contact rows.

SKY130 cells (toolkit/litho/cells, Apache-2.0) placed in rows as the real-layout
dedupe bench places them (mcon contacts along the rails). A window and its copy
moved (-8, -16) px lie 36 bits apart by hash; 32 windows of other places in the
rows (contact rows along the rails, several of them re-simulations of each
other) lie nearer. Verifying only the 16 nearest missed the copy's own original.
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
from toolkit.litho import Layout, rasterize
from toolkit.litho.cell_rows import SKY130_HD_DIR, LayerSpec, place_rows, placed_layout, read_cell, row_cells

NM_PER_PX = 4.0
SIZE_PX = 256

ORIGINAL = (6144.0, 45279.2)  # window corners (nm) on the placed mcon rows
COPY = (6112.0, 45215.2)  # the original's window moved (-8, -16) px
LOOKALIKES = [  # other windows whose hash lies nearer the copy's than the original's
    (6188.0, 45215.2), (6168.0, 1984.0), (5108.0, 27116.0), (5152.0, 27100.0), (1056.0, 41269.6),
    (13288.0, 32148.0), (10224.0, 6001.6), (1020.0, 41293.6), (4072.0, 39300.8), (2008.0, 35159.2),
    (13914.48, 7032.0), (972.0, 41249.6), (5072.0, -16.8), (5112.0, 31217.6), (3020.0, 21185.6),
    (13436.0, 32164.0), (5076.0, 31229.6), (5144.0, 31229.6), (13292.0, 35155.2), (3008.0, 21161.6),
    (14555.28, 31189.6), (10240.0, 6029.6), (1024.0, 41253.6), (40.0, 34240.8), (13926.48, 7040.0),
    (5096.0, 28218.4), (13292.0, 35263.2), (14547.28, 31165.6), (7164.0, 3050.4), (4088.0, 12004.0),
    (15053.88, 985.6), (13874.48, 7036.0),
]


@lru_cache(maxsize=1)
def _layout() -> Layout:
    """Every cell of the library in rows 16.4 um wide, shrink 0.37, as the bench places them (seed 0)."""
    specs = [LayerSpec.parse(text) for text in ("li1=67/20", "licon=66/44", "mcon=67/44")]
    cells, _ = row_cells([read_cell(path, specs, 0.37) for path in sorted(SKY130_HD_DIR.glob("*.gds"))])
    return placed_layout(place_rows(cells, 16384.0, np.random.default_rng(0)), "mcon", "mcon")


def _result(result_id: str, at: tuple[float, float]) -> SimResult:
    pad = 24
    corner = (at[0] - pad * NM_PER_PX, at[1] - pad * NM_PER_PX)
    big = rasterize(_layout(), corner, SIZE_PX + 2 * pad, NM_PER_PX)
    printed = (cv2.GaussianBlur(big, (0, 0), 3.0) > 0.45).astype(np.float32)
    inner = slice(pad, pad + SIZE_PX)
    return SimResult(
        result_id=result_id,
        nm_per_px=NM_PER_PX,
        mask=make_image_ref(big[inner, inner].copy(), "png"),
        simulated=make_image_ref(printed[inner, inner].copy(), "png"),
        labels={},
        produced_at=datetime.now(UTC),
    )


@pytest.fixture(scope="module")
def stream() -> list[SimResult]:
    lookalikes = [_result(f"other-{i:02d}", at) for i, at in enumerate(LOOKALIKES)]
    return [_result("original", ORIGINAL), *lookalikes, _result("copy", COPY)]


def _run(settings: DedupeSettings, stream: list[SimResult]) -> list[object]:
    core = DedupeCore(InMemoryDedupeStore(), settings)
    return [outcome for result in stream for outcome in core.process_batch([result])]


def test_the_lookalikes_lie_nearer_by_hash_than_the_original(stream: list[SimResult]) -> None:
    core = DedupeCore(InMemoryDedupeStore())
    copy = core.prepare(stream[-1]).item
    distances = [copy.distance_bits(core.prepare(r).item.perceptual) for r in stream[:-1]]
    assert sum(d < distances[0] for d in distances[1:]) > 16
    assert distances[0] <= DedupeSettings().hamming_radius


def test_a_copy_is_found_behind_more_than_16_nearer_lookalikes(stream: list[SimResult]) -> None:
    outcomes = _run(DedupeSettings(), stream)
    copy = outcomes[-1]
    assert isinstance(copy, DuplicateRecord) and copy.duplicate_of == "original"
    assert copy.details["shift_px"] == [-8, -16]
    assert copy.details["found_by"] == "hash"
    assert isinstance(outcomes[0], UniqueResult)


def test_verifying_only_the_16_nearest_hash_candidates_misses_it(stream: list[SimResult]) -> None:
    outcomes = _run(DedupeSettings(max_candidates=16, profile_candidates=0), stream)
    assert isinstance(outcomes[-1], UniqueResult)
