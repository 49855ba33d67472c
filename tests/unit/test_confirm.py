"""Hybrid duplicate confirmation on generated (mask, print) pairs."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
import pytest

from services.explain.duplicates import duplicate_tiles, render_duplicate_panel
from services.novelty.confirm import Clip, ConfirmSettings, HybridConfirmer, confirm_pair, descriptor_path
from shared.contracts import DuplicateRecord, EmbeddedResult, Hashes, Neighbour, Topics, Transform, Vector
from shared.imageref import ImageLoader, make_image_ref
from shared.litho import ClipSample, FarmGenerator, Variant

SETTINGS = ConfirmSettings()


@lru_cache(maxsize=1)
def samples() -> dict[str, ClipSample]:
    """A shapes layout nominally and re-simulated (30 px shift, other dose and focus), a sibling layout."""
    farm = FarmGenerator(seed=3, families=("shapes",))
    layout = farm.new_layout()
    group = farm.group_id(layout)
    other = farm.new_layout()
    return {
        "library": farm.render(layout, group),
        "resim": farm.render(layout, group, Variant(shift_px=(30, -22), dose=1.03, defocus_nm=40.0)),
        "sibling": farm.render(other, farm.group_id(other), Variant(shift_px=(30, -22))),
    }


def clip(name: str) -> Clip:
    s = samples()[name]
    return Clip(s.mask, s.simulated)


def test_true_resimulation_is_confirmed_by_the_hash_path() -> None:
    found = confirm_pair(clip("library"), clip("resim"), SETTINGS)
    assert found is not None and found.method == "embedding+hash"
    assert found.details["shift_px"] == [30, -22]
    assert found.details["mask_hash_bits"] <= SETTINGS.mask_hash_radius_bits


def test_descriptor_path_alone_recovers_the_shift_of_a_resimulation() -> None:
    agreed, details = descriptor_path(clip("library"), clip("resim"), SETTINGS)
    assert agreed and details["shift_px"] == [30, -22]
    assert details["inliers"] >= SETTINGS.min_inliers
    assert len(details["points_result"]) == len(details["points_library"]) <= SETTINGS.max_panel_points


def test_distinct_layout_of_the_same_family_is_not_confirmed() -> None:
    assert confirm_pair(clip("library"), clip("sibling"), SETTINGS) is None


def test_exact_copy_is_an_embedding_hash_duplicate() -> None:
    found = confirm_pair(clip("library"), clip("library"), SETTINGS)
    assert found is not None and found.path == "exact" and found.method == "embedding+hash"


def test_a_print_that_changed_under_an_identical_mask_is_not_confirmed() -> None:
    s = samples()["library"]
    bridged = s.simulated.copy()
    bridged[100:160, 60:200] = 1.0  # a large printed blob the library print does not have
    assert confirm_pair(clip("library"), Clip(s.mask, bridged), SETTINGS) is None


def result(name: str, result_id: str) -> EmbeddedResult:
    s = samples()[name]
    mask, printed = make_image_ref(s.mask), make_image_ref(s.simulated)
    return EmbeddedResult(
        result_id=result_id, nm_per_px=4.0, mask=mask, simulated=printed, labels={"family": "shapes"},
        produced_at=datetime.now(UTC), hashes=Hashes(exact="0" * 64), aligned_simulated=printed,
        transform=Transform.identity(), embedding=Vector.from_array(np.ones(4, np.float32) / 2.0),
        model_version="m",
    )


def neighbour(name: str, similarity: float) -> Neighbour:
    s = samples()[name]
    return Neighbour(id=f"lib-{name}", similarity=similarity, mask=make_image_ref(s.mask),
                     simulated=make_image_ref(s.simulated))


def test_confirmer_publishes_a_duplicate_only_above_the_similarity_gate() -> None:
    confirmer = HybridConfirmer(ImageLoader(), ConfirmSettings(near_identity_similarity=0.95))
    vector = np.ones(4, np.float32) / 2.0
    out = confirmer(result("resim", "q-1"), vector, [neighbour("sibling", 0.99), neighbour("library", 0.97)])
    assert out is not None and out.topic == Topics.DUPLICATES and out.key == "q-1"
    assert isinstance(out.value, DuplicateRecord)
    assert out.value.duplicate_of == "lib-library" and out.value.method == "embedding+hash"
    assert out.value.stage == "novelty" and out.value.details["similarity"] == pytest.approx(0.97)
    assert confirmer(result("resim", "q-2"), vector, [neighbour("library", 0.90)]) is None
    assert confirmer(result("sibling", "q-3"), vector, [neighbour("library", 0.99)]) is None
    broken = neighbour("library", 0.99).model_copy(update={"mask": None, "simulated": None})
    assert confirmer(result("resim", "q-4"), vector, [broken]) is None  # no images: scored as usual


def test_duplicate_panel_draws_the_matched_keypoints() -> None:
    agreed, details = descriptor_path(clip("library"), clip("resim"), SETTINGS)
    assert agreed
    lib, resim = samples()["library"], samples()["resim"]
    tiles = duplicate_tiles("q-1", "lib-1", "embedding+descriptors", {"similarity": 0.97, **details},
                            (resim.mask, resim.simulated), (lib.mask, lib.simulated))
    assert tiles[0].points is not None and tiles[2].points is not None
    plain = duplicate_tiles("q-1", "lib-1", "embedding+descriptors", {}, (resim.mask, None), (None, None))
    panel = render_duplicate_panel(tiles, "q-1", "lib-1", "embedding+descriptors")
    bare = render_duplicate_panel(plain, "q-1", "lib-1", "embedding+descriptors")
    assert panel.shape == bare.shape and panel.dtype == np.uint8
    assert not np.array_equal(panel, bare)
