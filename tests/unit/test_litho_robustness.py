"""Random draws never fail: every family's parameter ranges, defect sites, the dataset maker."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from shared.dataset import read_dataset
from toolkit.litho import DEFECT_TYPES, FAMILIES, FarmGenerator, Variant, generate_layout
from toolkit.litho.dataset_cli import register
from toolkit.litho.defects import _connector


@pytest.mark.parametrize("family", FAMILIES)
def test_many_random_layouts_of_each_family(family: str) -> None:
    # The generators' parameter ranges do not depend on the canvas, so a small one keeps this fast.
    for seed in (1, 2, 3):
        rng = np.random.default_rng(seed)
        for _ in range(100):
            layout = generate_layout(family, rng, extent_nm=640.0)
            assert layout.family == family
            assert len(layout.rects) > 0


def test_connector_spanning_the_whole_overlap() -> None:
    # A width equal to the facing overlap used to make an empty uniform range by rounding (hi - width < lo).
    rng = np.random.default_rng(0)
    inner = (-1e6, -1e6, 1e6, 1e6)
    for _ in range(2000):
        lo = float(rng.uniform(0.0, 3000.0))
        hi = lo + float(rng.uniform(50.0, 120.0))
        a = np.array([lo - 200.0, lo, lo - 60.0, hi])  # left rectangle, facing edge at x = lo - 60
        b = np.array([lo, lo - 10.0, lo + 100.0, hi + 10.0])  # right one; y overlap is exactly [lo, hi]
        box = _connector(a, b, 500.0, 0, rng, inner)
        assert box is not None
        assert box[1] >= lo and box[3] <= hi + 1e-9 and box[0] == a[2] and box[2] == b[0]


def test_render_any_defect_falls_back_to_another_type_then_to_clean() -> None:
    farm = FarmGenerator(seed=3, size_px=128, nm_per_px=8.0)
    grating = farm.new_layout("grating")
    group = farm.group_id(grating)
    # A grating has no contacts: the maker must move on to a type that fits.
    sample = farm.render_any_defect(grating, group, Variant(), ["missing_contact", "merged_contact", "pinch"])
    assert sample.labels["defect"] == "pinch"
    clean = farm.render_any_defect(grating, group, Variant(), ["missing_contact", "merged_contact"])
    assert clean.labels["defect"] == "none" and clean.labels["severity"] == 0.0
    assert farm.render_any_defect(grating, group, Variant(), []).labels["defect"] == "none"


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lithowatch")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_dataset_make_with_defects_never_crashes(tmp_path: Path, seed: int) -> None:
    out = tmp_path / "ds"
    argv = ["dataset", "make", "--n", "4", "--variants", "2", "--defect-rate", "0.5", "--seed", str(seed)]
    argv += ["--size", "64", "--nm-per-px", "8", "--max-shift-px", "4", "--format", "npy", "--out", str(out)]
    assert _run_cli(argv) == 0
    dataset = read_dataset(out)
    assert len(dataset) == 8
    for defect, severity in zip(dataset.labels_of("defect"), dataset.labels_of("severity"), strict=True):
        assert defect == "none" or defect in DEFECT_TYPES
        if defect == "none":
            assert severity == 0.0
