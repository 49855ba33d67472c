"""Real standard cells (SKY130, shipped with the package) placed in rows, windowed and simulated."""

from __future__ import annotations

import argparse
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shared.dataset import read_dataset
from shared.errors import ConfigError
from toolkit.litho.cell_rows import (
    SKY130_HD_DIR,
    LayerSpec,
    cell_kind,
    place_rows,
    placed_layout,
    read_cell,
    row_cells,
    row_windows,
    split_kinds,
)
from toolkit.litho.dataset_cli import register

LI1 = LayerSpec.parse("li1=67/20")
LICON = LayerSpec.parse("licon=66/44")
SMALL = ["inv_1", "inv_2", "nand2_1", "nand2_2", "nor2_1", "nor2_2", "buf_1", "a21oi_1", "o21ai_0", "xor2_1"]


def _paths(names: list[str]) -> list[Path]:
    return [SKY130_HD_DIR / f"sky130_fd_sc_hd__{n}.gds" for n in names]


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lithowatch")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_shipped_library_is_complete() -> None:
    assert len(list(SKY130_HD_DIR.glob("*.gds"))) == 437
    assert (SKY130_HD_DIR / "LICENSE").is_file()


def test_cell_kind() -> None:
    assert cell_kind("sky130_fd_sc_hd__nand2_4") == "nand2"
    assert cell_kind("sky130_fd_sc_hd__a2111oi_0") == "a2111oi"
    assert cell_kind("mycell") == "mycell"


def test_layer_spec() -> None:
    assert LayerSpec.parse("li1=67/20") == LayerSpec("li1", 67, 20)
    assert LayerSpec.parse("68") == LayerSpec("68", 68, None)
    assert LayerSpec("x", 66, 44).matches(66, 44) and not LayerSpec("x", 66, 44).matches(66, 20)
    for bad in ("li1=", "li1=a/b", "bad name=67/20"):
        with pytest.raises(ConfigError):
            LayerSpec.parse(bad)


def test_read_cell_boundary_and_shrink() -> None:
    cell = read_cell(_paths(["nand2_1"])[0], [LI1, LICON], shrink=0.5)
    assert cell.height_nm == pytest.approx(2720 * 0.5)
    assert cell.width_nm / (460 * 0.5) == pytest.approx(round(cell.width_nm / 230))  # whole sites
    li1 = cell.rects["li1"]
    assert len(li1) > 0 and len(cell.rects["licon"]) > 0
    # shapes sit on the cell (rails may overhang the boundary by half their width)
    assert li1[:, 0].min() >= -100 and li1[:, 2].max() <= cell.width_nm + 100
    with pytest.raises(ConfigError, match="shrink"):
        read_cell(_paths(["inv_1"])[0], [LI1], shrink=1.5)
    with pytest.raises(ConfigError, match="no such file"):
        read_cell(Path("/nonexistent/cell.gds"), [LI1])


def test_split_keeps_every_drive_strength_of_a_kind_together() -> None:
    cells = [read_cell(p, [LI1], 0.37) for p in _paths(SMALL)]
    train, held = split_kinds(cells, 0.4, seed=3)
    assert {c.kind for c in train}.isdisjoint({c.kind for c in held})
    assert len(train) + len(held) == len(cells) and train and held
    assert [c.name for c in split_kinds(cells, 0.4, seed=3)[1]] == [c.name for c in held]
    assert split_kinds(cells, 0.0, seed=3) == (cells, [])
    with pytest.raises(ConfigError):
        split_kinds(cells, 1.0, seed=0)


def test_rows_abut_and_mirror() -> None:
    cells, odd = row_cells([read_cell(p, [LI1], 0.37) for p in _paths(SMALL)])
    assert not odd
    placements = place_rows(cells, 3000.0, np.random.default_rng(0), copies=2)
    assert Counter(p.cell.name for p in placements) == Counter({c.name: 2 for c in cells})
    rows: dict[float, list] = {}
    for p in placements:
        rows.setdefault(p.y_nm, []).append(p)
    assert len(rows) >= 2
    for index, (y, members) in enumerate(sorted(rows.items())):
        assert y == pytest.approx(index * cells[0].height_nm)
        assert all(p.mirrored == (index % 2 == 1) for p in members)
        for a, b in itertools.pairwise(members):
            assert b.x_nm == pytest.approx(a.x_nm + a.cell.width_nm)  # abutted, no gap
    layout = placed_layout(placements, "li1", "li1")
    assert layout.rects[:, 3].max() <= max(rows) + cells[0].height_nm + 50
    windows = list(row_windows(placements, layout, 1000.0))
    assert windows
    for w in windows:
        assert w.centre_cell == w.cells[0]
        centre_y = w.y_nm + 500.0
        assert any(abs(centre_y - (y + cells[0].height_nm / 2)) < 1e-6 for y in rows)  # centred on a row


def test_from_layout_rows_cli(tmp_path: Path) -> None:
    folder = tmp_path / "cells"
    folder.mkdir()
    for path in _paths(SMALL):
        (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "ds"
    argv = [
        "dataset",
        "from-layout",
        str(folder),
        "--rows",
        "--layer",
        "li1=67/20",
        "--layer",
        "licon=66/44",
        "--shrink",
        "0.37",
        "--window-nm",
        "512",
        "--nm-per-px",
        "8",
        "--row-width-nm",
        "4000",
        "--variants",
        "3",
        "--eval-share",
        "0.3",
        "--seed",
        "1",
        "--out",
        str(out),
    ]
    assert _run_cli(argv) == 0
    train, held = read_dataset(out / "train"), read_dataset(out / "eval")
    assert len(train) and len(held)
    for dataset, split in ((train, "train"), (held, "eval")):
        labels = [item.labels for item in dataset.items]
        assert {row["split"] for row in labels} == {split}
        assert {row["family"] for row in labels} == {"li1", "licon"}
        sizes = Counter(row["group"] for row in labels)
        assert set(sizes.values()) == {3}  # every window under 3 variants
        assert all(item.load_mask().shape == (64, 64) for item in dataset.items[:5])
        for row in labels:
            if row["variant"] == 0:
                assert (row["shift_x_px"], row["shift_y_px"], row["defocus_nm"]) == (0, 0, 0.0)
                assert row["dose"] == row["base_dose"]
            if row["variant"] == 1:
                assert abs(float(row["defocus_nm"])) == 40.0
            assert abs(int(row["shift_x_px"])) <= 3 and abs(int(row["shift_y_px"])) <= 3  # 24 nm at 8 nm/px
    doses = {row["family"]: row["base_dose"] for row in (i.labels for i in train.items)}
    assert doses["licon"] > doses["li1"]  # contacts need more dose to print at size
    kinds_train = {str(i.labels["cell_kind"]) for i in train.items}
    kinds_eval = {str(i.labels["cell_kind"]) for i in held.items}
    assert kinds_train.isdisjoint(kinds_eval)
    assert any(i.labels["defect"] != "none" for i in train.items)  # variant 2 carries a mask defect


def test_from_layout_rows_errors(tmp_path: Path) -> None:
    cell = _paths(["inv_1"])[0]
    with pytest.raises(ConfigError, match="--layer"):
        _run_cli(["dataset", "from-layout", str(cell), "--rows", "--out", str(tmp_path / "a")])
    with pytest.raises(ConfigError, match="no cell has shapes"):
        _run_cli(
            ["dataset", "from-layout", str(cell), "--rows", "--layer", "x=99/0", "--out", str(tmp_path / "b")]
        )
    with pytest.raises(ConfigError, match=r"no \.glp"):
        _run_cli(["dataset", "from-layout", str(tmp_path), "--out", str(tmp_path / "c")])
    with pytest.raises(ConfigError, match="several --layer"):
        _run_cli(
            [
                "dataset",
                "from-layout",
                str(cell),
                "--layer",
                "1",
                "--layer",
                "2",
                "--out",
                str(tmp_path / "d"),
            ]
        )


def test_from_layout_shrink_scales_windows(tmp_path: Path) -> None:
    cell = _paths(["dfxtp_1"])[0]
    base = ["dataset", "from-layout", str(cell), "--layer", "67/20", "--window-nm", "512", "--nm-per-px", "8"]
    assert _run_cli([*base, "--out", str(tmp_path / "full")]) == 0
    assert _run_cli([*base, "--shrink", "0.5", "--out", str(tmp_path / "half")]) == 0
    full, half = read_dataset(tmp_path / "full"), read_dataset(tmp_path / "half")
    assert len(half) < len(full)  # half the size in each direction: fewer windows
    assert all(item.labels["shrink"] == 0.5 for item in half.items)
