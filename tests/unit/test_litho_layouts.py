"""Layout families, exact rasterization, defects with ground truth, the farm and its CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from shared.dataset import read_dataset
from shared.errors import ContractError
from toolkit.litho import (
    DEFECT_FAMILIES,
    DEFECT_TYPES,
    FAMILIES,
    FarmGenerator,
    Layout,
    Variant,
    generate_layout,
    manhattan_polygon_to_rects,
    rasterize,
)
from toolkit.litho.dataset_cli import register

REQUIRED_LABELS = {
    "family",
    "group",
    "variant",
    "shift_x_px",
    "shift_y_px",
    "dose",
    "defocus_nm",
    "bias_nm",
    "defect",
    "severity",
}


@pytest.fixture(scope="module")
def farm() -> FarmGenerator:
    return FarmGenerator(seed=11)


def test_rasterize_is_exact_area_coverage() -> None:
    # 10 nm x 6 nm at 4 nm/px starting mid-pixel.
    mask = rasterize(np.array([[2.0, 1.0, 12.0, 7.0]]), (0.0, 0.0), 4, 4.0)
    assert mask.sum() * 16.0 == pytest.approx(60.0)
    assert mask[0, 0] == pytest.approx((2.0 / 4.0) * (3.0 / 4.0))
    assert mask[0, 1] == pytest.approx(3.0 / 4.0)
    # Overlapping rectangles are a union (no double counting); abutting ones tile exactly.
    overlap = rasterize(np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]]), (0.0, 0.0), 8, 2.0)
    assert overlap.sum() * 4.0 == pytest.approx(175.0)
    abut = rasterize(np.array([[0.0, 0.0, 5.3, 8.0], [5.3, 0.0, 16.0, 8.0]]), (0.0, 0.0), 4, 4.0)
    np.testing.assert_allclose(abut[:2], 1.0, atol=1e-6)
    # Row index grows with y, column index with x.
    corner = rasterize(np.array([[12.0, 0.0, 16.0, 4.0]]), (0.0, 0.0), 4, 4.0)
    assert corner[0, 3] == 1.0 and corner.sum() == 1.0


def test_polygon_decomposition_area() -> None:
    l_shape = np.array([[0, 0], [40, 0], [40, 10], [10, 10], [10, 30], [0, 30]], dtype=float)
    rects = manhattan_polygon_to_rects(l_shape)
    area = float(np.sum((rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])))
    assert area == pytest.approx(40 * 10 + 10 * 20)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_renders_and_prints(farm: FarmGenerator, family: str) -> None:
    layout = farm.new_layout(family)
    assert layout.family == family and len(layout.rects) > 0 and layout.params
    sample = farm.render(layout, farm.group_id(layout), farm.random_variant())
    assert sample.mask.shape == sample.simulated.shape == (256, 256)
    assert sample.mask.dtype == sample.simulated.dtype == np.float32
    assert 0.02 < float(sample.mask.mean()) < 0.9
    assert float(sample.simulated.mean()) > 0.01  # features print
    assert float(sample.simulated.min()) >= 0.0 and float(sample.simulated.max()) <= 1.0
    assert set(sample.labels) >= REQUIRED_LABELS
    assert sample.labels["family"] == family and sample.labels["defect"] == "none"
    assert any(key.startswith("layout_") for key in sample.labels)


@pytest.mark.parametrize("family", FAMILIES)
def test_random_layouts_are_distinct(family: str) -> None:
    rng = np.random.default_rng(5)
    digests = {FarmGenerator.group_id(generate_layout(family, rng)) for _ in range(40)}
    assert len(digests) == 40
    masks = [rasterize(generate_layout(family, rng), (512.0, 512.0), 64, 16.0) for _ in range(6)]
    assert all(not np.array_equal(masks[0], m) for m in masks[1:])


def test_shift_moves_the_window_over_real_content() -> None:
    farm = FarmGenerator(seed=2)
    layout = farm.new_layout("routing")
    group = farm.group_id(layout)
    base = farm.render(layout, group)
    shifted = farm.render(layout, group, Variant(shift_px=(8, -4)))
    np.testing.assert_allclose(shifted.mask[4:, :-8], base.mask[:-4, 8:], atol=1e-6)
    assert shifted.labels["group"] == base.labels["group"] == group
    assert shifted.labels["variant"] == 1 and shifted.id != base.id
    # Prints agree to a fraction of a pixel (the simulation sees the real neighbourhood, not a wrap).
    assert float(np.abs(shifted.simulated[4:, :-8] - base.simulated[:-4, 8:]).max()) < 0.1


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_each_defect_changes_the_print(defect: str) -> None:
    farm = FarmGenerator(seed=23)
    for attempt in range(40):
        layout = farm.new_layout(DEFECT_FAMILIES[defect][attempt % len(DEFECT_FAMILIES[defect])])
        try:
            sample = farm.render(layout, "g", Variant(), defect=defect)
        except ContractError:
            continue
        break
    else:
        pytest.fail(f"no layout offered a site for {defect}")
    labels = sample.labels
    assert labels["defect"] == defect
    assert float(labels["severity"]) > 0.0  # type: ignore[arg-type]
    assert float(labels["defect_epe_nm"]) > 0.0  # type: ignore[arg-type]
    assert 0 <= float(labels["defect_x_px"]) < 256 and 0 <= float(labels["defect_y_px"]) < 256  # type: ignore[arg-type]
    dose = float(labels["dose"])  # type: ignore[arg-type]
    clean_mask, clean_print = farm.simulate_window(layout, Variant(dose=dose), dose)
    assert not np.array_equal(clean_mask, sample.mask)
    changed_nm2 = float(np.abs(clean_print - sample.simulated).sum()) * 16.0
    severity = float(labels["severity"])  # type: ignore[arg-type]
    if defect == "sidelobe":  # the spurious print at the assist, part of all that changed
        assert 0.0 < severity <= changed_nm2 + 1.0
        _, nominal_print = farm.simulate_window(layout, Variant(), 1.0)
        assert float(np.abs(nominal_print - sample.simulated).sum()) > 0.0
    else:
        assert changed_nm2 == pytest.approx(severity, rel=1e-3, abs=1.0)


def test_inapplicable_defect_is_a_contract_error() -> None:
    farm = FarmGenerator(seed=3)
    layout = farm.new_layout("grating")
    with pytest.raises(ContractError):
        farm.render(layout, "g", defect="missing_contact")
    with pytest.raises(ContractError):
        farm.render(layout, "g", defect="no_such_defect")


def test_samples_with_defect_rate_one() -> None:
    farm = FarmGenerator(seed=4, size_px=128, nm_per_px=8.0, families=("contacts",), defect_rate=1.0)
    samples = list(farm.samples(2, variants_per_layout=2))
    assert len(samples) == 4
    assert all(s.labels["defect"] in DEFECT_TYPES for s in samples)
    assert len({s.labels["group"] for s in samples}) == 2


def test_layout_is_immutable() -> None:
    layout = Layout(np.array([[0.0, 0.0, 10.0, 10.0]]), 100.0, "x")
    with pytest.raises(ValueError):
        layout.rects[0, 0] = 5.0
    with pytest.raises(ContractError):
        Layout(np.array([[10.0, 0.0, 0.0, 10.0]]), 100.0, "x")


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lithowatch")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_dataset_make_cli(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    code = _run_cli(
        [
            "dataset",
            "make",
            "--families",
            "grating,contacts",
            "--n",
            "3",
            "--variants",
            "2",
            "--defect-rate",
            "0.5",
            "--seed",
            "1",
            "--size",
            "64",
            "--nm-per-px",
            "8",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    dataset = read_dataset(out)
    assert len(dataset) == 6
    groups = dataset.labels_of("group")
    assert len(set(groups)) == 3 and all(groups.count(g) == 2 for g in set(groups))
    item = dataset.items[0]
    assert item.load_mask().shape == item.load_simulated().shape == (64, 64)
    assert set(dataset.labels_of("family")) <= {"grating", "contacts"}


def test_dataset_sheet_cli(tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    assert _run_cli(["dataset", "sheet", "--out", str(out), "--size", "128", "--nm-per-px", "8"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
