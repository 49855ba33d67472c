"""``lithowatch dedupe`` and ``lithowatch score`` run on small simulated folders (no broker, no Redis)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from app.cli import main
from shared.dataset import DatasetWriter
from shared.imaging import write_image_file
from toolkit.litho import ClipSample, FarmGenerator, Variant

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def clips() -> dict[str, ClipSample]:
    """A layout twice (a dose 2 % apart: the same mask, a re-simulation) and two other layouts."""
    farm = FarmGenerator(seed=5, size_px=128, nm_per_px=8.0)
    a, b, c = farm.new_layout("routing"), farm.new_layout("contacts"), farm.new_layout("line_ends")
    return {
        "a0": farm.render(a, "a"),
        "a1": farm.render(a, "a", Variant(dose=1.02)),
        "b0": farm.render(b, "b"),
        "c0": farm.render(c, "c"),
    }


def write_dataset(root: Path, items: dict[str, ClipSample]) -> Path:
    with DatasetWriter(root) as writer:
        for item_id, clip in items.items():
            writer.add(item_id, clip.mask, clip.simulated, clip.nm_per_px, dict(clip.labels))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, clips: dict[str, ClipSample]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("offline")
    results = write_dataset(root / "results", {"a-0": clips["a0"], "a-1": clips["a1"],
                                               "a-copy": clips["a0"], "b-0": clips["b0"], "c-0": clips["c0"]})
    library = write_dataset(root / "library", {"lib-a": clips["a0"], "lib-b": clips["b0"]})
    queries = write_dataset(root / "queries", {"q-a": clips["a1"], "q-c": clips["c0"]})
    plain = root / "plain"
    for name, clip in (("a0", clips["a0"]), ("copy_of_a0", clips["a0"]), ("b0", clips["b0"])):
        write_image_file(plain / f"{name}_mask.png", clip.mask)
        write_image_file(plain / f"{name}_sim.png", clip.simulated)
    for name, clip in (("x", clips["a0"]), ("y", clips["a0"]), ("z", clips["c0"])):
        write_image_file(plain / "prints" / f"{name}.png", clip.simulated)
    (plain / "broken.png").write_bytes(b"not an image")
    return {"root": root, "results": results, "library": library, "queries": queries, "plain": plain}


def run(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capfd.readouterr()
    return code, out, err


def valid_png(path: Path) -> np.ndarray:
    assert path.read_bytes().startswith(PNG_MAGIC)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 50 and image.shape[1] > 50
    return image


def grouped(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Kept id -> {duplicate id: method}."""
    return {g["kept"]["id"]: {d["id"]: d["method"] for d in g["duplicates"]} for g in report["groups"]}


# -- dedupe ------------------------------------------------------------------------------------


def test_dedupe_groups_a_data_set_and_draws_the_sheet(folders: dict[str, Path], tmp_path: Path,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    out, sheet = tmp_path / "dupes.json", tmp_path / "sheet.png"
    code, _, err = run(["dedupe", str(folders["results"]), "--out", str(out), "--sheet", str(sheet),
                        "--quiet"], capfd)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert grouped(report) == {"a-0": {"a-1": "perceptual", "a-copy": "exact"}}  # b-0, c-0: in no group
    assert report["counts"] == {"results": 5, "unique": 3, "duplicates": 2, "groups": 1, "skipped": 0}
    assert report["source"]["kind"] == "dataset" and report["settings"]["hash_kind"] == "spectral-v1"
    kept = report["groups"][0]["kept"]
    assert kept["files"] == ["images/a-0_mask.png", "images/a-0_sim.png"] and kept["labels"]["group"] == "a"
    for duplicate in report["groups"][0]["duplicates"]:
        assert duplicate["duplicate_of"] == "a-0" and 0.0 <= duplicate["distance"] < 0.3
        assert set(duplicate) == {"id", "files", "labels", "duplicate_of", "method", "distance", "details"}
    assert report["groups"][0]["duplicates"][1]["distance"] == 0.0  # exact
    image = valid_png(sheet)
    assert image.shape[1] >= 4 * 192  # kept mask, kept print and two duplicates side by side
    assert "1 groups" in err and "2 duplicates" in err


def test_dedupe_a_plain_folder_of_pairs_and_prints(folders: dict[str, Path],
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["dedupe", str(folders["plain"]), "--quiet"], capfd)
    assert code == 0, err
    report = json.loads(out)  # the report on standard output
    assert report["source"]["kind"] == "images"
    assert grouped(report) == {"a0": {"copy_of_a0": "exact"}, "prints_x": {"prints_y": "exact"}}
    members = {m["id"]: m["files"] for g in report["groups"] for m in [g["kept"], *g["duplicates"]]}
    assert members["a0"] == ["a0_mask.png", "a0_sim.png"] and members["prints_y"] == ["prints/y.png"]
    # the unreadable file is listed, not fatal; the print of a0 alone is not merged with the pair
    assert [(s["files"], s["reason"]) for s in report["skipped"]] == [(["broken.png"], "unreadable")]
    assert report["counts"]["results"] == 6 and report["counts"]["unique"] == 4
    assert "skipped broken.png" in err


@pytest.mark.parametrize("case", ["missing", "empty", "file", "unreadable-only"])
def test_dedupe_refuses_a_bad_folder_in_one_line(case: str, tmp_path: Path,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "dir"
    if case == "empty":
        target.mkdir()
        (target / "notes.txt").write_text("no images here")
    elif case == "file":
        target.write_text("a file")
    elif case == "unreadable-only":
        target.mkdir()
        (target / "a.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    code, out, err = run(["dedupe", str(target), "--quiet"], capfd)
    assert code == 2 and out == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith("lithowatch: error: ") and str(target) in line
    assert "Traceback" not in err


# -- score -------------------------------------------------------------------------------------


def score_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["result_id"]: row for row in csv.DictReader(handle)}


def test_score_against_a_data_set_library_writes_csv_and_panels(
        folders: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from app.offline.score import CSV_COLUMNS

    out, panels = tmp_path / "scores.csv", tmp_path / "panels"
    code, _, err = run(["score", str(folders["queries"]), "--library", str(folders["library"]),
                        "--out", str(out), "--panels", str(panels), "--quiet"], capfd)
    assert code == 0, err
    with out.open(newline="") as handle:
        assert tuple(next(csv.reader(handle))) == CSV_COLUMNS
    rows = score_rows(out)
    assert set(rows) == {"q-a", "q-c"}
    known, novel = rows["q-a"], rows["q-c"]
    assert known["decision"] == "known" and known["nearest_id"] == "lib-a"
    assert float(known["novelty_score"]) < float(known["threshold"]) == pytest.approx(0.1)
    assert novel["decision"] == "novel" and float(novel["novelty_score"]) >= 0.1
    assert len(novel["neighbours"].split(";")) == 2  # the whole library: two entries
    assert sorted(p.name for p in panels.iterdir()) == ["q-c.png"]  # a panel for the novel one only
    assert valid_png(panels / "q-c.png").shape[1] >= 4 * 192  # mask, print, two neighbours
    assert "1 known, 1 novel" in err


def test_score_a_plain_folder_lists_unreadable_files_as_skipped_rows(
        folders: dict[str, Path], capfd: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["score", str(folders["plain"]), "--library", str(folders["library"]), "--nm-per-px",
                          "8", "--format", "csv", "--no-provisional", "--quiet"], capfd)
    assert code == 0, err
    rows = {row["result_id"]: row for row in csv.DictReader(out.splitlines())}
    assert list(rows) == ["a0", "b0", "broken", "copy_of_a0", "prints_x", "prints_y", "prints_z"]  # by path
    for result_id, nearest in (("a0", "lib-a"), ("copy_of_a0", "lib-a"), ("b0", "lib-b")):
        assert (rows[result_id]["decision"], rows[result_id]["nearest_id"]) == ("known", nearest)
        assert float(rows[result_id]["novelty_score"]) < 0.01  # the library's own pixels
    assert rows["broken"]["decision"] == "skipped" and rows["broken"]["novelty_score"] == ""
    assert rows["broken"]["skipped_reason"].startswith("unreadable: ")
    assert rows["prints_x"]["files"] == "prints/x.png" and rows["prints_x"]["decision"] in ("known", "novel")
    assert "skipped broken.png" in err


def test_score_against_a_snapshot_agrees_with_the_data_set_library(
        folders: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from app.offline.library import open_library
    from shared.model import load_encoder
    from shared.model.default import default_model_path

    encoder = load_encoder(default_model_path(), device="cpu")
    library = open_library(folders["library"], encoder, progress=False)
    snapshot = tmp_path / "snapshot"
    library.state.snapshot(snapshot)
    by_dataset, by_snapshot = tmp_path / "a.json", tmp_path / "b.json"
    for lib, out in ((folders["library"], by_dataset), (snapshot, by_snapshot)):
        code, _, err = run(["score", str(folders["queries"]), "--library", str(lib), "--out", str(out),
                            "--no-provisional", "--quiet"], capfd)
        assert code == 0, err
    first, second = json.loads(by_dataset.read_text()), json.loads(by_snapshot.read_text())
    assert second["library"]["kind"] == "snapshot" and second["library"]["reference_entries"] == 2
    assert second["thresholds"]["source"].startswith("LITHOWATCH_DEFAULT_THRESHOLD")
    assert second["counts"] == {"results": 2, "scored": 2, "known": 1, "novel": 1, "provisional": 0,
                                "skipped": 0}
    for a, b in zip(first["results"], second["results"], strict=True):
        assert a["result_id"] == b["result_id"] and a["decision"] == b["decision"]
        assert a["novelty_score"] == pytest.approx(b["novelty_score"], abs=1e-5)
        assert [n["id"] for n in a["neighbours"]] == [n["id"] for n in b["neighbours"]]
    result = second["results"][0]
    assert set(result) >= {"result_id", "files", "novelty_score", "threshold", "decision", "neighbours",
                           "alignment"}


def test_score_applies_a_thresholds_file(folders: dict[str, Path], tmp_path: Path,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    from shared.index.thresholds import ThresholdsFile, save_thresholds
    from shared.model import read_metadata
    from shared.model.default import default_model_path

    model_version = read_metadata(default_model_path()).model_version
    thresholds = save_thresholds(tmp_path / "thresholds.json", ThresholdsFile(
        model_version=model_version, global_threshold=1.5, method="fixed"))
    code, out, err = run(["score", str(folders["queries"]), "--library", str(folders["library"]),
                          "--thresholds", str(thresholds), "--format", "csv", "--quiet"], capfd)
    assert code == 0, err
    rows = list(csv.DictReader(out.splitlines()))
    assert {(r["result_id"], r["decision"], r["threshold"]) for r in rows} == {
        ("q-a", "known", "1.500000"), ("q-c", "known", "1.500000")}


def test_score_refuses_a_library_of_another_model_in_one_line(
        folders: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from shared.contracts import LibraryEntry, Vector
    from shared.index import LibraryState

    other = LibraryState("some-other-model", 8)
    other.apply(LibraryEntry(entry_id="x", vector=Vector.from_array(np.eye(8, dtype=np.float32)[0]),
                             model_version="some-other-model"), 0, 0)
    other.snapshot(tmp_path / "other")
    for library, expected in ((tmp_path / "other", "holds vectors of model 'some-other-model'"),
                              (tmp_path / "nowhere", "no such file or folder"),
                              (folders["plain"], "neither a library snapshot")):
        code, out, err = run(["score", str(folders["queries"]), "--library", str(library), "--quiet"], capfd)
        assert code == 2 and out == ""
        line = err.strip().splitlines()[-1]
        assert line.startswith("lithowatch: error: ") and expected in line, err


def test_score_a_missing_folder_fails_before_the_model_loads(tmp_path: Path,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["score", str(tmp_path / "nothing"), "--library", str(tmp_path)], capfd)
    assert code == 2 and err.strip() == f"lithowatch: error: {tmp_path / 'nothing'}: no such folder"
