"""train on several data sets, with a hybrid vector, ending with the table on layouts never trained on."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from model_fixtures import make_dataset

from shared.dataset import DatasetWriter
from shared.errors import ConfigError
from shared.model import load_encoder
from shared.model.descriptors import DescriptorSpec
from toolkit.evaluation.verdict import Row, verdict
from toolkit.training.cli import register
from toolkit.training.train import TrainConfig, read_datasets, train_encoder


def _rename(src: Path, dst: Path, prefix: str) -> Path:
    """A copy of a data set whose ids and groups carry ``prefix`` (another data set's items)."""
    from shared.dataset import read_dataset

    with DatasetWriter(dst) as writer:
        for item in read_dataset(src).items:
            labels = {**item.labels, "group": f"{prefix}{item.labels['group']}"}
            writer.add(f"{prefix}{item.id}", item.load_mask(), item.load_simulated(), item.nm_per_px, labels)
    return dst


def test_several_data_sets_train_as_one_and_the_run_ends_with_the_table(tmp_path: Path) -> None:
    first = make_dataset(tmp_path / "a", n_groups=9, variants=3)
    second = _rename(first, tmp_path / "b", "b-")
    evaluation = _rename(make_dataset(tmp_path / "e", n_groups=9, variants=3), tmp_path / "eval", "e-")
    assert len(read_datasets([first, second])) == 2 * len(read_datasets(first))
    with pytest.raises(ConfigError, match="share item ids"):
        read_datasets([first, first])
    cfg = TrainConfig(
        arch="resnet18-w16",
        input_size=32,
        epochs=1,
        batch_size=16,
        threads=1,
        device="cpu",
        input_nm_per_px="auto",
        descriptor=DescriptorSpec(pixel_grid=8, spectral_band=4),
    )
    result = train_encoder(
        [first, second], tmp_path / "ckpt", cfg, progress=False, eval_dataset=evaluation, recipe="a test"
    )
    meta = result.metadata
    assert meta.nm_per_px == pytest.approx(48 * 4.0 / 32)  # auto: the median clip fills the input
    assert meta.descriptor == cfg.descriptor and "+hybrid" in meta.model_version
    assert meta.training["recipe"] == "a test" and len(meta.training["dataset"]) == 2
    assert {"val_p_at_5", "val_p_at_5_learned", "val_p_at_5_untrained"} <= set(meta.metrics)
    rows = {row["name"]: row for row in meta.metrics["eval"]["rows"]}
    assert list(rows) == ["this model", "learned part alone", "descriptors alone", "pixels32", "phash"]
    assert all(0.0 <= row["p_at_5"] <= 1.0 for row in rows.values())
    assert meta.metrics["eval"]["verdict"] and "this model" in result.eval_table
    assert load_encoder(tmp_path / "ckpt", device="cpu").dim == meta.embedding_dim


def test_hybrid_weights_option() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    base = ["train", "--dataset", "x", "--out", "y"]
    assert parser.parse_args(base).hybrid_weights == DescriptorSpec()
    assert parser.parse_args([*base, "--hybrid-weights", "none"]).hybrid_weights is None
    assert parser.parse_args([*base, "--hybrid-weights", "0,1,2"]).hybrid_weights == DescriptorSpec(
        learned_weight=0, pixel_weight=1, spectral_weight=2
    )
    assert parser.parse_args([*base, "--input-nm-per-px", "none"]).input_nm_per_px is None
    for bad in (["--hybrid-weights", "0,0,0"], ["--hybrid-weights", "1,2"], ["--input-nm-per-px", "-3"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, *bad])


def test_verdict_names_each_missed_bar() -> None:
    def row(name: str, p5: float, within: float, fam: float) -> Row:
        return Row(name, 1.0, p5, p5, within, fam)

    rows = [
        row("good", 0.99, 0.995, 1.0),
        row("weak", 0.90, 0.97, 0.98),
        row("pixels32", 0.84, 0.99, 1.0),
        row("phash", 0.93, 0.99, 1.0),
    ]
    good, weak = verdict(rows)
    assert good == "good: beats the baselines"  # 1.0 ties the baselines at the ceiling: no loss
    assert "P@5 not 0.05 above" in weak and "within-family" in weak and "families" in weak
