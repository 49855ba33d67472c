"""Known-answer tests of layout and kernel import: .glp clips, GDSII windows, contest kernel files."""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import gdstk
import numpy as np
import pytest

from shared.dataset import read_dataset
from shared.errors import ConfigError
from toolkit.litho import LithoSimulator, OpticsSettings, compute_socs_kernels, rasterize
from toolkit.litho.dataset_cli import register
from toolkit.litho.kernel_io import read_kernel_bin, read_kernel_dir, write_kernel_dir
from toolkit.litho.layout_io import layout_windows, parse_glp, read_gds, read_glp, window_mask
from toolkit.litho.optics import SocsKernels

GLP_TEXT = """BEGIN     /* hand-written test clip */
EQUIV  1  1000  MICRON  +X,+Y
CNAME Temp_Top
LEVEL M1

CELL Temp_Top PRIME
   RECT N M1  0 0 8 4
   PGON N M1  16 0 28 0 28 4 20 4 20 16 16 16
   RECT N M2  0 12 4 4
ENDMSG
"""


def test_glp_rect_and_pgon_rasterize_to_expected_pixels() -> None:
    layout = parse_glp(GLP_TEXT, layer="M1")
    mask = window_mask(layout, (0.0, 0.0), 32.0, 4.0)
    expected = np.zeros((8, 8), dtype=np.float32)
    expected[0, 0:2] = 1.0  # RECT 0 0 8 4: x 0..8, y 0..4
    expected[0, 4:7] = 1.0  # PGON bottom bar: x 16..28, y 0..4
    expected[1:4, 4] = 1.0  # PGON stem: x 16..20, y 4..16
    np.testing.assert_array_equal(mask, expected)


def test_glp_layers_units_and_offsets() -> None:
    all_layers = parse_glp(GLP_TEXT)
    assert len(all_layers.rects) > len(parse_glp(GLP_TEXT, layer="M1").rects)
    # 1 unit = 2 nm and shapes away from the origin: translated, offset recorded.
    text = "EQUIV 1 500 MICRON\nRECT N M1 10 20 5 5\n"
    layout = parse_glp(text)
    np.testing.assert_allclose(layout.rects, [[0.0, 0.0, 10.0, 10.0]])
    assert layout.params["offset_x_nm"] == 20.0 and layout.params["offset_y_nm"] == 40.0


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("BEGIN\nRECT N M1 0 0 8\n", 2),
        ("BEGIN\n\nPGON N M1 0 0 10 0 10 10\n", 3),
        ("PGON N M1 0 0 10 5 10 10 0 10\n", 1),
        ("EQUIV 1 x MICRON\n", 1),
        ("RECT N M1 0 0 -3 4\n", 1),
        ("RECT N M1 0 0 a 4\n", 1),
    ],
)
def test_malformed_glp_names_the_line(text: str, line: int) -> None:
    with pytest.raises(ConfigError, match=f"clip.glp:{line}:"):
        parse_glp(text, source="clip.glp")


def test_glp_without_shapes_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.glp"
    path.write_text("BEGIN\nENDMSG\n")
    with pytest.raises(ConfigError, match="no shapes"):
        read_glp(path)


def _write_gds(path: Path) -> None:
    lib = gdstk.Library(unit=1e-6, precision=1e-9)
    cell = lib.new_cell("TOP")
    for i in range(6):
        cell.add(gdstk.rectangle((0.1 + 0.25 * i, 0.2), (0.18 + 0.25 * i, 1.8), layer=1, datatype=0))
    cell.add(gdstk.Polygon([(2.0, 0.2), (2.6, 0.2), (2.6, 0.3), (2.1, 0.3), (2.1, 0.9), (2.0, 0.9)], layer=1))
    cell.add(gdstk.rectangle((0.0, 0.0), (3.0, 2.0), layer=2, datatype=0))
    lib.write_gds(str(path))


def test_gds_windows(tmp_path: Path) -> None:
    path = tmp_path / "small.gds"
    _write_gds(path)
    layout = read_gds(path, layer="1/0")
    assert layout.params["cell"] == "TOP"
    area_nm2 = float(
        np.sum((layout.rects[:, 2] - layout.rects[:, 0]) * (layout.rects[:, 3] - layout.rects[:, 1]))
    )
    assert area_nm2 == pytest.approx(6 * 80 * 1600 + 600 * 100 + 100 * 600)
    windows = list(layout_windows(layout, 1024.0))
    # The 2500 x 1600 nm bounding box tiles as 3 x 2 windows of 1024 nm; the top-right one is empty.
    assert len(windows) == 5
    total = sum(float(window_mask(layout, w, 1024.0, 8.0).sum()) for w in windows) * 64.0
    assert total == pytest.approx(area_nm2, rel=1e-6)  # windows tile without overlap or loss
    assert len(read_gds(path, layer="2").rects) == 1
    with pytest.raises(ConfigError):
        read_gds(path, layer="one")


def _toy_kernels() -> SocsKernels:
    rng = np.random.default_rng(0)
    kernels = rng.normal(size=(3, 35, 35)) + 1j * rng.normal(size=(3, 35, 35))
    kernels[:, 17, 17] += 5.0
    return SocsKernels(kernels, np.array([0.5, 0.3, 0.2]), 2048.0)


def test_kernel_files_round_trip_in_contest_layout(tmp_path: Path) -> None:
    toy = _toy_kernels()
    write_kernel_dir(tmp_path, toy)
    assert (tmp_path / "scales.txt").read_text().splitlines()[0] == "3"
    raw = (tmp_path / "fh0.bin").read_bytes()
    assert len(raw) == 24 + 35 * 35 * 8
    assert struct.unpack(">3i", raw[:12]) == (35, 35, 2)
    # Known answer: value at (y=18, x=17) sits at x-major index x*35 + y, as big-endian (re, im).
    re, im = struct.unpack(">2f", raw[24 + 8 * (17 * 35 + 18) : 24 + 8 * (17 * 35 + 18) + 8])
    assert re == pytest.approx(toy.kernels[0, 18, 17].real, rel=1e-6)
    assert im == pytest.approx(toy.kernels[0, 18, 17].imag, rel=1e-6)
    back = read_kernel_dir(tmp_path)
    np.testing.assert_allclose(back.kernels, toy.kernels, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(back.weights, toy.normalised().weights, rtol=1e-6)
    assert back.period_nm == 2048.0


def test_kernel_file_errors(tmp_path: Path) -> None:
    write_kernel_dir(tmp_path, _toy_kernels())
    (tmp_path / "fh1.bin").write_bytes((tmp_path / "fh1.bin").read_bytes()[:100])
    with pytest.raises(ConfigError, match=r"fh1\.bin"):
        read_kernel_dir(tmp_path)
    (tmp_path / "scales.txt").write_text("3\n0.5\nabc\n0.1\n")
    with pytest.raises(ConfigError, match=r"scales\.txt:3"):
        read_kernel_dir(tmp_path)
    (tmp_path / "scales.txt").write_text("5\n0.5\n")
    with pytest.raises(ConfigError, match="declares 5"):
        read_kernel_dir(tmp_path)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(struct.pack(">6i", 34, 34, 2, 0, 0, 0) + bytes(34 * 34 * 8))
    with pytest.raises(ConfigError, match="odd"):
        read_kernel_bin(bad)


def test_external_kernels_replace_the_computed_optics(tmp_path: Path) -> None:
    optics = OpticsSettings()
    mask = rasterize(
        np.array([[300.0, 300.0, 700.0, 380.0], [300.0, 500.0, 380.0, 800.0]]), (0.0, 0.0), 256, 4.0
    )
    computed = LithoSimulator(optics=optics).aerial(mask)
    # Same period: the files reproduce the computed image up to float32 storage.
    write_kernel_dir(tmp_path / "k1024", compute_socs_kernels(optics, 1024.0))
    same = LithoSimulator(kernels=read_kernel_dir(tmp_path / "k1024", period_nm=1024.0)).aerial(mask)
    assert float(np.abs(same - computed).max()) < 1e-4
    # Kernels made for a 2048 nm window are resampled to the 1024 nm window's frequency grid.
    write_kernel_dir(tmp_path / "k2048", compute_socs_kernels(optics, 2048.0))
    resampled = LithoSimulator(kernels=read_kernel_dir(tmp_path / "k2048")).aerial(mask)
    assert float(np.abs(resampled - computed).max()) < 0.02
    with pytest.raises(ConfigError):
        LithoSimulator(kernels=read_kernel_dir(tmp_path / "k1024", period_nm=1024.0)).aerial(
            mask, defocus_nm=20.0
        )


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lithowatch")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_from_layout_cli(tmp_path: Path) -> None:
    glp = tmp_path / "clip.glp"
    glp.write_text(
        "EQUIV 1 1000 MICRON\n"
        + "".join(f"RECT N M1 {100 + 200 * i} 100 90 700\n" for i in range(4))
        + "PGON N M1 0 0 900 0 900 60 0 60\n"
    )
    gds = tmp_path / "small.gds"
    _write_gds(gds)
    kernels = tmp_path / "kernels"
    write_kernel_dir(kernels, compute_socs_kernels(OpticsSettings(), 512.0))
    out = tmp_path / "ds"
    assert (
        _run_cli(
            ["dataset", "from-layout", str(glp), "--window-nm", "512", "--nm-per-px", "8", "--out", str(out)]
        )
        == 0
    )
    dataset = read_dataset(out)
    assert len(dataset) == 4  # the 900 x 800 nm clip tiles as 2 x 2 windows of 512 nm
    assert all(item.load_mask().shape == (64, 64) for item in dataset.items)
    # each window is a layout of its own (a group); the file is the source
    assert {item.labels["group"] for item in dataset.items} == {f"clip-{i:04d}" for i in range(4)}
    assert {item.labels["source"] for item in dataset.items} == {"clip.glp"}
    assert (
        _run_cli(
            [
                "dataset",
                "from-layout",
                str(gds),
                "--layer",
                "1/0",
                "--window-nm",
                "512",
                "--nm-per-px",
                "8",
                "--out",
                str(tmp_path / "gds"),
            ]
        )
        == 0
    )
    expected = len(list(layout_windows(read_gds(gds, layer="1/0"), 512.0)))
    assert len(read_dataset(tmp_path / "gds")) == expected > 4
    code = _run_cli(
        [
            "dataset",
            "from-layout",
            str(glp),
            "--kernels",
            str(kernels),
            "--kernel-period-nm",
            "512",
            "--window-nm",
            "512",
            "--nm-per-px",
            "8",
            "--out",
            str(tmp_path / "ds2"),
        ]
    )
    assert code == 0
    assert read_dataset(tmp_path / "ds2").items[0].labels["optics"] == "kernel_files"
    with pytest.raises(ConfigError):
        _run_cli(
            [
                "dataset",
                "from-layout",
                str(glp),
                "--window-nm",
                "500",
                "--nm-per-px",
                "8",
                "--out",
                str(tmp_path / "ds3"),
            ]
        )
