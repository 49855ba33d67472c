"""The explain core with in-memory images and blob store: panels, records and bad alerts."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from memory_fakes import MemoryBlobStore, MemoryImages

from services.explain.core import ExplainCore
from services.explain.render import GAP_PX, TILE_PX
from shared.contracts import AlertRecord, ExplanationRecord, Neighbour
from shared.errors import InputError
from shared.imaging import decode_image, sha256_hex
from shared.testing import random_manhattan

PRODUCED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def clip(seed: int) -> tuple[np.ndarray, np.ndarray]:
    mask = random_manhattan(np.random.default_rng(seed), 48)
    return mask, (mask > 0.5).astype(np.float32)


def alert(images: MemoryImages, result_id: str, neighbours: int = 3, seed: int = 0) -> AlertRecord:
    mask, printed = clip(seed)
    return AlertRecord(
        alert_id=f"alert-{result_id}",
        result_id=result_id,
        novelty_score=0.42,
        threshold=0.2,
        neighbours=[
            Neighbour(
                id=f"lib-{i}",
                similarity=0.58 - 0.01 * i,
                labels={"family": "grating"},
                simulated=images.ref(clip(100 + i)[1]),
                provisional=i == 2,
            )
            for i in range(neighbours)
        ],
        mask=images.ref(mask),
        simulated=images.ref(printed),
        model_version="enc-v1",
        labels={"family": "sram"},
        produced_at=PRODUCED_AT,
    )


def tiles_in(width_px: int) -> int:
    return (width_px + GAP_PX) // (TILE_PX + GAP_PX)


def test_an_alert_is_explained_by_a_stored_panel_of_it_and_its_nearest_neighbours() -> None:
    images, store = MemoryImages(), MemoryBlobStore()
    item = alert(images, "novel-1")
    record = ExplainCore(images, store, max_neighbours=3).explain(item)
    assert isinstance(record, ExplanationRecord)
    assert (record.alert_id, record.result_id) == ("alert-novel-1", "novel-1")
    assert record.neighbour_ids == ["lib-0", "lib-1", "lib-2"]
    assert record.summary == "novelty 0.420 over threshold 0.200; nearest lib-0 at similarity 0.580"
    assert record.produced_at == PRODUCED_AT
    # the panel is in the store under its digest, with the shape the record says
    assert record.panel.uri is not None and record.panel.inline_b64 is None
    png = store.get(record.panel.uri)
    assert sha256_hex(png) == record.panel.sha256
    panel = decode_image(png)
    assert panel.shape[:2] == record.panel.shape
    assert tiles_in(panel.shape[1]) == 2 + 3  # mask, print and three neighbours


def test_the_panel_shows_at_most_max_neighbours_and_the_record_names_them_all() -> None:
    images, store = MemoryImages(), MemoryBlobStore()
    item = alert(images, "novel-2", neighbours=5)
    record = ExplainCore(images, store, max_neighbours=1).explain(item)
    assert tiles_in(record.panel.shape[1]) == 2 + 1
    assert record.neighbour_ids == [f"lib-{i}" for i in range(5)]


def test_a_missing_neighbour_image_leaves_its_tile_empty_but_the_alert_is_explained() -> None:
    images, store = MemoryImages(), MemoryBlobStore()
    item = alert(images, "novel-3")
    gone = item.neighbours[1].model_copy(update={"simulated": MemoryImages.missing()})
    item = item.model_copy(update={"neighbours": [item.neighbours[0], gone]})
    record = ExplainCore(images, store).explain(item)
    assert record.neighbour_ids == ["lib-0", "lib-1"] and record.panel.uri in store.blobs


def test_an_alert_without_neighbours_says_so() -> None:
    images, store = MemoryImages(), MemoryBlobStore()
    record = ExplainCore(images, store).explain(alert(images, "alone", neighbours=0))
    assert record.summary.endswith("; no neighbours") and record.neighbour_ids == []


def test_an_alert_whose_own_images_are_missing_is_rejected_and_the_batch_goes_on() -> None:
    images, store = MemoryImages(), MemoryBlobStore()
    bad = alert(images, "bad").model_copy(update={"simulated": MemoryImages.missing()})
    outcomes = ExplainCore(images, store).process_batch([alert(images, "a"), bad, alert(images, "b")])
    assert [o.result_id for o in outcomes if isinstance(o, ExplanationRecord)] == ["a", "b"]
    assert isinstance(outcomes[1], InputError) and outcomes[1].reason == "image_missing"
    with pytest.raises(InputError):
        ExplainCore(images, store).explain(bad)


def test_the_same_alert_explained_twice_gives_the_same_panel() -> None:
    images, store = MemoryImages(), MemoryBlobStore()
    item = alert(images, "again")
    core = ExplainCore(images, store)
    first, second = core.explain(item), core.explain(item)
    assert first.panel == second.panel and len(store.blobs) == 1
