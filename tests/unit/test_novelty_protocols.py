"""Known-answer tests of the novelty protocols: cells held out within families, each family held out
in turn, precomputed novelty scores (reconstruction error), and ``lithowatch eval novelty --protocol``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from shared.dataset import DatasetWriter
from shared.errors import ConfigError, ContractError
from toolkit.calibration.pairs import LabelValue
from toolkit.calibration.split import NO_FAMILY, CalibrationSplit, split_for_calibration
from toolkit.evaluation.novelty import NoveltyScoring, held_out_family_scores
from toolkit.evaluation.novelty_commands import eval_novelty, eval_novelty_protocols

CELLS_PER_FAMILY = {"fA": 10, "fB": 4, "fC": 2}


def catalogue(
    cells_per_family: dict[str, int] = CELLS_PER_FAMILY, windows: int = 2, variants: int = 2
) -> list[dict[str, LabelValue]]:
    """Families of cells, each cell shown in ``windows`` layout windows (groups) of ``variants`` items.

    Cell names repeat across families (``c0`` is in every one): a held-out value is one of its family.
    """
    return [
        {"family": family, "cell": f"c{c}", "group": f"{family}-c{c}-w{w}"}
        for family, n_cells in cells_per_family.items()
        for c in range(n_cells)
        for w in range(windows)
        for _ in range(variants)
    ]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def family_cell(row: dict[str, LabelValue]) -> tuple[str, str]:
    return str(row["family"]), str(row["cell"])


def novel_items(split: CalibrationSplit) -> np.ndarray:
    return np.sort(np.concatenate([split.novel_cal, split.novel_test]))


def known_items(split: CalibrationSplit) -> np.ndarray:
    return np.sort(np.concatenate([split.known_cal, split.known_test]))


# -- within-family split ---------------------------------------------------------------------------


def test_within_family_holds_out_a_share_of_cells_in_every_family() -> None:
    labels = catalogue()
    split = split_for_calibration(labels, holdout_within="cell", holdout_share=0.3, seed=0)
    # round(0.3 * n) values per family, at least one on each side
    expected = {"fA": 3, "fB": 1, "fC": 1}
    described = split.describe()
    assert described["holdout_within"] == "cell" and described["family_label"] == "family"
    assert described["held_out_per_family"] == {
        f: {"held_out": expected[f], "values": n} for f, n in CELLS_PER_FAMILY.items()
    }
    novel = novel_items(split)
    held_out = {family_cell(labels[i]) for i in novel}
    for family, n_out in expected.items():
        assert len({c for f, c in held_out if f == family}) == n_out
    # every item of a held-out cell is a novel query, and nothing else is
    np.testing.assert_array_equal(novel, [i for i, row in enumerate(labels) if family_cell(row) in held_out])
    # no held-out cell in the library or among the known queries; every family keeps cells in the library
    library_cells = {family_cell(labels[i]) for i in split.library}
    assert not library_cells & held_out
    assert not {family_cell(labels[i]) for i in known_items(split)} & held_out
    assert {f for f, _ in library_cells} == set(CELLS_PER_FAMILY)
    # known queries are other variants of library groups; the three parts cover every item once
    library_groups = {labels[i]["group"] for i in split.library}
    assert {labels[i]["group"] for i in known_items(split)} <= library_groups
    parts = np.concatenate([split.library, known_items(split), novel])
    np.testing.assert_array_equal(np.sort(parts), np.arange(len(labels)))
    assert "cell" in split.novel_rule and "family" in split.novel_rule and "5 of 16" in split.novel_rule


def test_within_family_draws_each_family_on_its_own() -> None:
    labels = catalogue({"fA": 6, "fB": 6}, windows=1, variants=3)
    held: set[tuple[tuple[str, str], ...]] = set()
    for seed in range(8):
        split = split_for_calibration(labels, holdout_within="cell", holdout_share=0.5, seed=seed)
        cells = tuple(sorted({family_cell(labels[i]) for i in novel_items(split)}))
        assert sum(f == "fA" for f, _ in cells) == 3 and sum(f == "fB" for f, _ in cells) == 3
        held.add(cells)
    # "c0" held out in fA says nothing about "c0" in fB: the draws differ between families
    assert any({c for f, c in cells if f == "fA"} != {c for f, c in cells if f == "fB"} for cells in held)


def test_within_family_split_is_seeded() -> None:
    labels = catalogue()
    a = split_for_calibration(labels, holdout_within="cell", seed=3)
    b = split_for_calibration(labels, holdout_within="cell", seed=3)
    for name in ("library", "known_cal", "known_test", "novel_cal", "novel_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    others = [split_for_calibration(labels, holdout_within="cell", seed=s) for s in range(4, 8)]
    assert any(not np.array_equal(novel_items(a), novel_items(o)) for o in others)


def test_within_family_by_group_and_items_without_family_or_value() -> None:
    labels = catalogue({"fA": 3}, windows=2, variants=3)  # 6 groups in fA
    labels += [{"group": f"loose{g}"} for g in range(3) for _ in range(2)]  # no family, no cell
    split = split_for_calibration(labels, holdout_within="group", holdout_share=0.4, seed=1)
    per_family = split.describe()["held_out_per_family"]
    assert per_family == {"fA": {"held_out": 2, "values": 6}, NO_FAMILY: {"held_out": 1, "values": 3}}
    novel = novel_items(split)
    assert len({labels[i]["group"] for i in novel}) == 3
    # a share of cells instead: the items without a cell are never held out
    by_cell = split_for_calibration(
        labels[:-6] + [{"family": "fB", "group": "x"}, {"family": "fB", "group": "x"}]
        + [{"family": "fB", "cell": c, "group": f"fB-{c}"} for c in ("k0", "k1") for _ in range(2)],
        holdout_within="cell", seed=0,
    )
    assert by_cell.describe()["held_out_per_family"]["fB"] == {"held_out": 1, "values": 2}
    assert not set(novel_items(by_cell)) & {18, 19}


def test_within_family_errors() -> None:
    labels = catalogue()
    lonely = labels + [{"family": "fD", "cell": "only", "group": f"fD-{w}"} for w in range(3)]
    with pytest.raises(ConfigError, match="'fD' \\(1\\)"):
        split_for_calibration(lonely, holdout_within="cell")
    with pytest.raises(ConfigError, match="no item carries the label 'shape'"):
        split_for_calibration(labels, holdout_within="shape")
    for share in (0.0, 1.0, -0.2):
        with pytest.raises(ConfigError, match="holdout share"):
            split_for_calibration(labels, holdout_within="cell", holdout_share=share)
    with pytest.raises(ConfigError, match="not both"):
        split_for_calibration(labels, holdout_within="cell", holdout_label="family", holdout_values=["fA"])


# -- families held out in turn -------------------------------------------------------------------


def family_features(labels: list[dict[str, LabelValue]], seed: int = 0) -> np.ndarray:
    """Each family in its own block of dimensions, groups tight clusters in it."""
    rng = np.random.default_rng(seed)
    families = sorted({str(r["family"]) for r in labels})
    groups = sorted({str(r["group"]) for r in labels})
    dim = 8
    centres = {g: rng.normal(size=dim) for g in groups}
    rows = np.zeros((len(labels), dim * len(families)))
    for i, row in enumerate(labels):
        block = families.index(str(row["family"]))
        rows[i, block * dim : (block + 1) * dim] = centres[str(row["group"])] + 0.01 * rng.normal(size=dim)
    return unit(rows)


def test_each_family_held_out_in_turn_reports_auroc_per_family_and_mean() -> None:
    labels = catalogue({"fA": 3, "fB": 3, "fC": 3}, windows=2, variants=3)
    rng = np.random.default_rng(1)
    sets: dict[str, tuple[np.ndarray, NoveltyScoring]] = {
        "encoder": (family_features(labels), "cosine"),
        "noise": (unit(rng.normal(size=(len(labels), 24))), "cosine"),
    }
    scored = held_out_family_scores(sets, labels)
    assert set(scored["families"]) == {"fA", "fB", "fC"}
    for family, entry in scored["families"].items():
        assert entry["split"]["novel_rule"] == f"family in ['{family}']"
        assert entry["results"]["encoder"]["auroc"] == 1.0
        assert entry["results"]["encoder"]["n_novel"] == 18  # the whole family
        assert entry["results"]["encoder"]["n_known"] == 12  # one variant of each other group
    aurocs = [e["results"]["noise"]["auroc"] for e in scored["families"].values()]
    noise = scored["results"]["noise"]
    assert noise["auroc"] == pytest.approx(np.mean(aurocs)) and noise["auroc_min"] == min(aurocs)
    assert noise["n_families"] == 3 and noise["auroc"] < 0.9
    assert scored["results"]["encoder"] == {"auroc": 1.0, "average_precision": 1.0, "auroc_min": 1.0,
                                            "n_families": 3}


def test_a_family_that_cannot_be_held_out_is_skipped_and_one_family_is_an_error() -> None:
    labels = catalogue({"fA": 3}, windows=2, variants=3)  # groups of three
    labels += [{"family": f, "group": f"{f}-{g}"} for f in ("fB", "fC") for g in range(4)]  # singletons
    sets: dict[str, tuple[np.ndarray, NoveltyScoring]] = {"encoder": (family_features(labels), "cosine")}
    scored = held_out_family_scores(sets, labels)
    assert "no known group" in scored["families"]["fA"]["skipped"]
    assert scored["results"]["encoder"]["n_families"] == 2
    one_family = catalogue({"fA": 3})
    with pytest.raises(ConfigError, match="2 values or more"):
        held_out_family_scores({"encoder": (family_features(one_family), "cosine")}, one_family)


# -- precomputed scores (reconstruction error) ---------------------------------------------------------


def test_precomputed_reconstruction_scores_are_reported_beside_the_encoder(tmp_path: Path) -> None:
    labels = catalogue({"fA": 4, "fB": 4}, windows=2, variants=3)
    features = family_features(labels)
    split = split_for_calibration(labels, holdout_within="cell", seed=2)
    novel = novel_items(split)
    errors = np.full(len(labels), 0.1)
    errors[novel] = 0.5  # the autoencoder reconstructs new cells badly
    sets: dict[str, tuple[np.ndarray, NoveltyScoring]] = {
        "encoder": (features, "cosine"),
        "reconstruction": (errors, "precomputed"),
        "inverted": (-errors, "precomputed"),
    }
    summary = eval_novelty(sets, labels, holdout_within="cell", seed=2, report_dir=tmp_path)
    assert summary["protocol"] == "within-family"
    results = summary["results"]
    assert results["reconstruction"]["auroc"] == 1.0 and results["inverted"]["auroc"] == 0.0
    assert results["reconstruction"]["n_novel"] == novel.size == results["encoder"]["n_novel"]
    assert 0.1 < results["reconstruction"]["threshold"] <= 0.5
    assert (tmp_path / "novelty_within_family_roc_reconstruction.png").exists()
    with pytest.raises(ContractError, match="reconstruction"):
        eval_novelty({**sets, "reconstruction": (errors[:-1], "precomputed")}, labels)
    both = eval_novelty_protocols(sets, labels, holdout_within="cell", seed=2)
    assert both["table"]["within-family"]["reconstruction"]["auroc"] == 1.0
    assert set(both["table"]["families"]) == {"encoder", "reconstruction", "inverted"}


def test_default_protocol_summary_keeps_its_keys() -> None:
    labels = catalogue({"fA": 4, "fB": 4}, windows=2, variants=3)
    sets: dict[str, tuple[np.ndarray, NoveltyScoring]] = {"encoder": (family_features(labels), "cosine")}
    summary = eval_novelty(sets, labels)
    assert {"command", "split", "results"} <= set(summary) and summary["protocol"] == "groups"
    assert "of 16 group values held out" in summary["split"]["novel_rule"]
    with pytest.raises(ConfigError, match="protocols are among"):
        eval_novelty_protocols(sets, labels, protocols=("cells",))


# -- the command line --------------------------------------------------------------------------------


def write_catalogue(root: Path, labels: list[dict[str, LabelValue]], seed: int = 0) -> None:
    """Images per group: one random base, variants flip a few pixels."""
    rng = np.random.default_rng(seed)
    bases: dict[str, np.ndarray] = {}
    with DatasetWriter(root) as writer:
        for i, row in enumerate(labels):
            group = str(row["group"])
            base = bases.setdefault(group, (rng.random((32, 32)) > 0.5).astype(np.float32))
            variant = base.copy()
            variant[rng.integers(0, 32, 4), rng.integers(0, 32, 4)] = 1.0
            writer.add(f"item{i}", variant, variant, 4.0, dict(row))


def test_eval_novelty_protocol_both_through_the_cli(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Through ``app.cli.main`` (capfd: main registers faulthandler on the real stderr)."""
    labels = catalogue({"fA": 4, "fB": 4, "fC": 4}, windows=2, variants=3)
    write_catalogue(tmp_path / "data", labels)
    np.save(tmp_path / "emb.npy", family_features(labels))
    code = main([
        "eval", "novelty", "--dataset", str(tmp_path / "data"), "--embeddings", str(tmp_path / "emb.npy"),
        "--protocol", "both", "--pixel-size", "8", "--json", str(tmp_path / "out.json"),
        "--report", str(tmp_path / "report"),
    ])
    assert code == 0
    summary = json.loads(capfd.readouterr().out)
    assert json.loads((tmp_path / "out.json").read_text()) == summary
    assert summary["protocol"] == "within-family+families"
    table = summary["table"]
    assert set(table) == {"within-family", "families"}
    for per_features in table.values():
        assert set(per_features) == {"encoder", "pixels8", "phash"}
        assert all(set(r) == {"auroc", "average_precision"} for r in per_features.values())
    assert table["within-family"]["encoder"]["auroc"] == 1.0 and table["families"]["encoder"]["auroc"] == 1.0
    within = summary["protocols"]["within-family"]["split"]
    assert within["holdout_within"] == "cell"  # the items carry a cell label: the default
    assert within["held_out_per_family"]["fA"] == {"held_out": 1, "values": 4}
    assert set(summary["protocols"]["families"]["families"]) == {"fA", "fB", "fC"}
    html = (tmp_path / "report" / "index.html").read_text()
    for title in ("Novelty by protocol", "Novelty (within-family)", "Novelty (families)"):
        assert title in html
    assert (tmp_path / "report" / "novelty_families_auroc.png").exists()
    # --holdout-label belongs to the groups protocol
    assert main([
        "eval", "novelty", "--dataset", str(tmp_path / "data"), "--embeddings", str(tmp_path / "emb.npy"),
        "--protocol", "families", "--holdout-label", "family", "--holdout-values", "fA",
    ]) == 2
    assert "--holdout-label/--holdout-values go with --protocol groups" in capfd.readouterr().err


def test_eval_novelty_with_an_autoencoder_checkpoint_adds_reconstruction(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from shared.model import build_untrained, save_encoder

    labels = catalogue({"fA": 3, "fB": 3}, windows=2, variants=2)
    write_catalogue(tmp_path / "data", labels)
    # a canonical scale (32 px at 4 nm/px = the clips' own): each clip's nm_per_px must reach the model
    autoencoder = build_untrained("autoencoder", "mask,print", input_size=32, device="cpu", nm_per_px=4.0)
    save_encoder(autoencoder, tmp_path / "ae")
    code = main([
        "eval", "novelty", "--dataset", str(tmp_path / "data"), "--model", str(tmp_path / "ae"),
        "--device", "cpu", "--protocol", "within-family", "--holdout-within", "group", "--no-baselines",
    ])
    assert code == 0
    summary = json.loads(capfd.readouterr().out)
    assert set(summary["table"]["within-family"]) == {"encoder", "reconstruction"}
    result = summary["protocols"]["within-family"]["results"]["reconstruction"]
    assert 0.0 <= result["auroc"] <= 1.0 and result["n_novel"] > 0
    assert summary["protocols"]["within-family"]["split"]["holdout_within"] == "group"
