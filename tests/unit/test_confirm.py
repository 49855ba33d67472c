"""Hybrid duplicate confirmation on generated (mask, print) pairs."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.explain.duplicates import duplicate_tiles, render_duplicate_panel
from services.novelty.confirm import (
    Clip,
    ConfirmSettings,
    HybridConfirmer,
    confirm_pair,
    descriptor_path,
    process_of,
)
from shared.contracts import DuplicateRecord, EmbeddedResult, Hashes, Neighbour, Transform, Vector
from shared.imageref import ImageLoader, make_image_ref
from shared.verification import PixelTolerances, blind_spot_conflict, overlap_windows, verify_shifted_match
from toolkit.litho import ClipSample, FarmGenerator, Variant, applicable_defects

SETTINGS = ConfirmSettings()
# a re-simulation whose print edges moved beyond 2 px slivers (found by a scan of generated layouts)
CASE_SEED, CASE_FAMILY = 6, "sram"
CASE_VARIANT = Variant(shift_px=(34, -26), dose=0.95, defocus_nm=-60.0)


@lru_cache(maxsize=1)
def samples() -> dict[str, ClipSample]:
    """A shapes layout nominally, re-simulated (30 px and 46 px shifts, other dose and focus) and with a
    mask defect (small shift), and a sibling layout."""
    farm = FarmGenerator(seed=3, families=("shapes",))
    layout = farm.new_layout()
    group = farm.group_id(layout)
    other = farm.new_layout()
    small = Variant(shift_px=(5, -3))
    defective = farm.render_any_defect(layout, group, small, applicable_defects(layout, farm.window_nm(
        small.shift_px), farm.rng))
    assert defective.labels["defect"] != "none"
    return {
        "library": farm.render(layout, group),
        "resim": farm.render(layout, group, Variant(shift_px=(30, -22), dose=1.03, defocus_nm=40.0)),
        "far_resim": farm.render(layout, group, Variant(shift_px=(-46, 38), dose=0.96, defocus_nm=-60.0)),
        "defective": defective,
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


def test_resimulation_with_a_larger_shift_and_another_focus_is_confirmed() -> None:
    found = confirm_pair(clip("library"), clip("far_resim"), SETTINGS)
    assert found is not None and found.details["shift_px"] == [-46, 38]


def test_resimulation_with_a_mask_defect_is_refused() -> None:
    assert confirm_pair(clip("library"), clip("defective"), SETTINGS) is None


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
    assert isinstance(out, DuplicateRecord) and out.result_id == "q-1"
    assert out.duplicate_of == "lib-library" and out.method == "embedding+hash"
    assert out.stage == "novelty" and out.details["similarity"] == pytest.approx(0.97)
    assert confirmer(result("resim", "q-2"), vector, [neighbour("library", 0.90)]) is None
    assert confirmer(result("sibling", "q-3"), vector, [neighbour("library", 0.99)]) is None
    broken = neighbour("library", 0.99).model_copy(update={"mask": None, "simulated": None})
    assert confirmer(result("resim", "q-4"), vector, [broken]) is None  # no images: scored as usual


def test_calibrated_gate_from_the_thresholds_file_applies_unless_the_setting_is_given(tmp_path: Path) -> None:
    vector = np.ones(4, np.float32) / 2.0
    calibrated: list[float | None] = [0.98]
    confirmer = HybridConfirmer(ImageLoader(), ConfirmSettings(near_identity_similarity=0.95),
                                gate=lambda: calibrated[0])
    assert confirmer.gate == 0.98
    assert confirmer(result("resim", "q-1"), vector, [neighbour("library", 0.97)]) is None  # below 0.98
    calibrated[0] = 0.6  # the file was recalibrated (hot reload): the same neighbour now passes
    out = confirmer(result("resim", "q-2"), vector, [neighbour("library", 0.97)])
    assert out is not None and out.duplicate_of == "lib-library"
    calibrated[0] = None  # a thresholds file without a gate: the settings' value
    assert confirmer.gate == 0.95

    class ServiceSettings:
        blob_root = tmp_path / "blobs"
        max_image_pixels = 1 << 20
        near_identity_similarity: float | None = 0.9
        confirm_candidate_pool = 7
        confirm_max_candidates = 2
        confirm_marginal_width_fraction = 0.4
        confirm_process_labels = " dose, defocus_nm,bias_nm "
        confirm_across_process = "mask_only"

    explicit = HybridConfirmer.from_settings(ServiceSettings(), lambda: None, lambda: 0.5)
    assert explicit.gate == 0.9 and explicit.settings.candidate_pool == 7
    assert explicit.settings.max_candidates == 2 and explicit.settings.marginal_width_fraction == 0.4
    assert explicit.settings.process_labels == ("dose", "defocus_nm", "bias_nm")
    assert explicit.settings.across_process == "mask_only"
    ServiceSettings.near_identity_similarity = None
    assert HybridConfirmer.from_settings(ServiceSettings(), lambda: None, lambda: 0.5).gate == 0.5


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


def test_novelty_service_reads_the_calibrated_gate_from_the_thresholds_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.novelty.main import NoveltySettings, ThresholdsWatcher
    from shared.index.thresholds import NearIdentityGate, ThresholdsFile, save_thresholds

    path = tmp_path / "thresholds.json"
    save_thresholds(path, ThresholdsFile(model_version="m", global_threshold=0.2, method="fixed",
                                         near_identity=NearIdentityGate(similarity=0.71, quantile=0.01,
                                                                        n_pairs=300)))
    assert ThresholdsWatcher(path, 0.1, None).near_identity_similarity() == 0.71
    save_thresholds(path, ThresholdsFile(model_version="m", global_threshold=0.2, method="fixed"))
    assert ThresholdsWatcher(path, 0.1, None).near_identity_similarity() is None
    assert ThresholdsWatcher(None, 0.1, None).near_identity_similarity() is None
    monkeypatch.delenv("LITHOWATCH_NEAR_IDENTITY_SIMILARITY", raising=False)
    assert NoveltySettings().near_identity_similarity is None  # the calibrated gate unless set


def grating_windows(bridge: bool) -> tuple[Clip, Clip]:
    """A grating (14 px lines, 38 px pitch, cut at one height) seen nominally, and
    re-simulated 1 px right and 4 px down, with or without a bridge in the result's last 16 px."""
    canvas = np.zeros((400, 400), np.float32)
    for x in range(0, 400, 38):
        canvas[92:308, x:x + 14] = 1.0
    canvas[196:204] = 0.0  # every line cut at one height: the layout repeats along x only
    library = canvas[72:328, 72:328].copy()
    result = canvas[76:332, 73:329].copy()  # result[y, x] == library[y + 4, x + 1]
    if bridge:  # from the line at x 231-244 across the gap to the edge: within 40 px of it
        assert result[150, 238] == 1.0 and not result[150, 245:].any()
        result[140:160, 240:256] = 1.0
    return Clip(library, library.copy()), Clip(result, result.copy())


def test_a_defect_hidden_by_a_registration_one_period_off_is_refused() -> None:
    clean_library, clean = grating_windows(bridge=False)
    found = confirm_pair(clean_library, clean, SETTINGS)
    assert found is not None and found.details["shift_px"] == [1, 4]
    library, bridged = grating_windows(bridge=True)
    # the dedupe stage's registration alone accepts a shift one pitch off: the bridge is then
    # outside the overlap, where nothing was compared
    dedupe_limits = PixelTolerances(max_shift_px=56, mask_mismatch_max_px=4, print_tolerance_px=2,
                                    print_mismatch_max_px=4)
    alias = verify_shifted_match(library.mask_u8, library.print_binary, bridged.mask_u8, bridged.print_binary,
                                 dedupe_limits)
    assert alias is not None and alias.shift_px != (1, 4)
    limits = PixelTolerances(max_shift_px=56, mask_mismatch_max_px=4, print_tolerance_px=2,
                             print_mismatch_max_px=40)
    pair = (library.mask_u8, library.print_binary, bridged.mask_u8, bridged.print_binary, alias.shift_px)
    assert blind_spot_conflict(*pair, limits) == (1, 4)
    topology_aware = PixelTolerances(max_shift_px=56, mask_mismatch_max_px=4, print_tolerance_px=2,
                                     print_mismatch_max_px=40, print_edge_band_px=SETTINGS.print_edge_band_px)
    assert blind_spot_conflict(*pair, topology_aware) == (1, 4)
    assert confirm_pair(library, bridged, SETTINGS) is None


def print_hotspot(printed: np.ndarray, window: tuple[slice, slice], edit: str) -> np.ndarray:
    """``printed`` with a missing feature, a printed sidelobe or a bridge well inside ``window``."""
    binary = printed > 0.5
    inside = np.zeros(binary.shape, dtype=bool)
    inside[window] = True
    inside = cv2.erode(inside.astype(np.uint8), np.ones((25, 25), np.uint8), borderValue=0) > 0
    n, labels = cv2.connectedComponents(binary.astype(np.uint8), connectivity=8)
    out = binary.astype(np.uint8)
    if edit == "missing":
        first = next(i for i in range(1, n) if inside[labels == i].all())
        out[labels == first] = 0
    elif edit == "sidelobe":  # a blob of radius 3 px (24-28 nm) at least 10 px from any printed feature
        free = (cv2.distanceTransform(1 - out, cv2.DIST_L2, 5) >= 10) & inside
        ys, xs = np.nonzero(free)
        cv2.circle(out, (int(xs[0]), int(ys[0])), 3, 1, -1)
    else:  # bridge: the closest two features joined by a 3 px wide neck
        best: tuple[float, tuple[int, int], tuple[int, int]] | None = None
        for i in range(1, n):
            dist = cv2.distanceTransform((labels != i).astype(np.uint8), cv2.DIST_L2, 5)
            other = (labels > 0) & (labels != i) & inside
            if other.any():
                at = np.unravel_index(int(np.argmin(np.where(other, dist, np.inf))), dist.shape)
                ys, xs = np.nonzero(labels == i)
                j = int(np.argmin((ys - at[0]) ** 2 + (xs - at[1]) ** 2))
                if best is None or dist[at] < best[0]:
                    best = (float(dist[at]), (int(xs[j]), int(ys[j])), (int(at[1]), int(at[0])))
        assert best is not None
        cv2.line(out, best[1], best[2], 1, 3)
    return out.astype(np.float32)


def test_a_defocused_resimulation_is_confirmed_and_a_print_only_hotspot_of_it_refused() -> None:
    farm = FarmGenerator(seed=CASE_SEED, families=(CASE_FAMILY,))
    layout = farm.new_layout()
    group = farm.group_id(layout)
    library = farm.render(layout, group)
    resim = farm.render(layout, group, CASE_VARIANT)
    lib, res = Clip(library.mask, library.simulated), Clip(resim.mask, resim.simulated)
    # the print edges moved beyond the dedupe stage's slivers: the older check alone refuses
    assert confirm_pair(lib, res, SETTINGS.model_copy(update={"print_edge_band_px": 0})) is None
    found = confirm_pair(lib, res, SETTINGS)
    assert found is not None and found.details["shift_px"] == list(CASE_VARIANT.shift_px)
    assert found.details["print_topology"] == "same" and found.details["print_edge_px"] > 2 * 2
    window = overlap_windows(lib.mask.shape, *CASE_VARIANT.shift_px)[1]
    for edit in ("missing", "sidelobe", "bridge"):
        hotspot = Clip(resim.mask, print_hotspot(resim.simulated, window, edit))  # the mask is unchanged
        assert confirm_pair(lib, hotspot, SETTINGS) is None, edit


# a routing re-simulation whose print lost a marginal feature at +60 nm (found by a scan of generated layouts)
MARGINAL_VARIANT = Variant(shift_px=(30, -26), dose=0.97, defocus_nm=60.0)


@lru_cache(maxsize=1)
def marginal_resimulation() -> tuple[ClipSample, ClipSample]:
    """The routing layout of seed 0 nominally, and re-simulated under ``MARGINAL_VARIANT``."""
    farm = FarmGenerator(seed=0, families=("routing",))
    layout = farm.new_layout()
    group = farm.group_id(layout)
    return farm.render(layout, group), farm.render(layout, group, MARGINAL_VARIANT)


def test_a_resimulation_that_lost_a_marginal_feature_is_confirmed_only_across_process_conditions() -> None:
    library, resim = marginal_resimulation()
    variant = MARGINAL_VARIANT
    keys = SETTINGS.process_labels
    assert process_of(library.labels, keys) == (1.0, 0.0) and process_of({"dose": 1.0}, keys) is None
    lib = Clip(library.mask, library.simulated, process_of(library.labels, keys))
    res = Clip(resim.mask, resim.simulated, process_of(resim.labels, keys))
    def forgiven() -> float:
        found = REGISTRY.get_sample_value("lithowatch_confirmations_total",
                                          {"path": "print", "outcome": "marginal_forgiven"})
        return found or 0.0

    before = forgiven()
    marginal = SETTINGS.model_copy(update={"across_process": "marginal"})
    found = confirm_pair(lib, res, marginal)
    assert found is not None and found.details["shift_px"] == list(variant.shift_px)
    assert found.details["print_topology"] == "marginal" and found.details["print_marginal_vanished"] >= 1
    assert "print_refused_across_process" not in found.details
    assert forgiven() == before + 1  # the metric engineers watch
    # unknown or equal process conditions: a print that lost a feature under the same mask is scored
    for settings in (marginal, SETTINGS):
        assert confirm_pair(Clip(library.mask, library.simulated), Clip(resim.mask, resim.simulated),
                            settings) is None
        assert confirm_pair(lib, Clip(resim.mask, resim.simulated, lib.process), settings) is None
    assert confirm_pair(lib, res, marginal.model_copy(update={"marginal_width_fraction": 0.0})) is None
    window = overlap_windows(lib.mask.shape, *variant.shift_px)[1]
    for edit in ("missing", "sidelobe"):  # a line gone, a blob in free space: hotspots at any focus
        hotspot = Clip(resim.mask, print_hotspot(resim.simulated, window, edit), res.process)
        assert confirm_pair(lib, hotspot, marginal) is None, edit
    # the service takes the process conditions from the result's and the library entry's labels
    confirmer = HybridConfirmer(ImageLoader(), ConfirmSettings(near_identity_similarity=0.9))
    entry = Neighbour(id="lib-0", similarity=0.95, labels=dict(library.labels),
                      mask=make_image_ref(library.mask), simulated=make_image_ref(library.simulated))
    query = result("resim", "q-m").model_copy(update={
        "mask": make_image_ref(resim.mask), "aligned_simulated": make_image_ref(resim.simulated),
        "labels": dict(resim.labels)})
    out = confirmer(query, np.ones(4, np.float32) / 2.0, [entry])
    assert isinstance(out, DuplicateRecord)
    assert out.details["print_topology"] == "marginal"
    unlabelled = query.model_copy(update={"labels": {"family": "routing"}})
    assert confirmer(unlabelled, np.ones(4, np.float32) / 2.0, [entry]) is None


def test_mask_only_across_process_confirms_on_the_mask_and_records_what_the_print_showed() -> None:
    library, resim = marginal_resimulation()
    variant = MARGINAL_VARIANT
    mask_only = SETTINGS
    lib = Clip(library.mask, library.simulated, (1.0, 0.0))
    window = overlap_windows(lib.mask.shape, *variant.shift_px)[1]
    sidelobe = print_hotspot(resim.simulated, window, "sidelobe")
    marginal = SETTINGS.model_copy(update={"across_process": "marginal"})
    assert SETTINGS.across_process == "mask_only"  # the default
    assert confirm_pair(lib, Clip(resim.mask, sidelobe, (0.97, 60.0)), marginal) is None
    before = REGISTRY.get_sample_value("lithowatch_confirmations_total",
                                       {"path": "print", "outcome": "mask_only"}) or 0.0
    found = confirm_pair(lib, Clip(resim.mask, sidelobe, (0.97, 60.0)), mask_only)
    assert found is not None and found.path == "hash" and found.details["shift_px"] == list(variant.shift_px)
    assert found.details["print_refused_across_process"] is True
    assert found.details["print_topology"] == "components"  # recorded for the explanation
    assert REGISTRY.get_sample_value("lithowatch_confirmations_total",
                                     {"path": "print", "outcome": "mask_only"}) == before + 1
    # the same or an unknown process condition: the print still refuses; so does another mask
    assert confirm_pair(lib, Clip(resim.mask, sidelobe, (1.0, 0.0)), mask_only) is None
    assert confirm_pair(lib, Clip(resim.mask, sidelobe), mask_only) is None
    shapes, defective = samples()["library"], samples()["defective"]
    assert confirm_pair(Clip(shapes.mask, shapes.simulated, (1.0, 0.0)),
                        Clip(defective.mask, defective.simulated, (0.97, 60.0)), mask_only) is None
    # prints that agree are confirmed without the mark
    plain = confirm_pair(lib, Clip(resim.mask, resim.simulated, (0.97, 60.0)), mask_only)
    assert plain is not None and "print_refused_across_process" not in plain.details
