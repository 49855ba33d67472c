"""The ``crossview`` and ``contrastive+crossview`` objectives on tiny models and images."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import layout_canvas, make_dataset, one_torch_thread, variant_window  # noqa: F401

from shared.errors import ConfigError
from shared.model import load_encoder
from shared.model.checkpoint import METADATA_NAME
from shared.model.nets import build_net
from shared.model.preprocess import default_normalisation, parse_channels
from toolkit.training.cli import register
from toolkit.training.data import TrainingSet
from toolkit.training.objectives import (
    ContrastiveCrossViewObjective,
    CrossView,
    CrossViewObjective,
    TrainingObjective,
    Views,
    info_nce,
)
from toolkit.training.train import TrainConfig, train_encoder

INPUT_PX = 32
TINY = "resnet18-w16"
OBJECTIVES = ("crossview", "contrastive+crossview")


def make_training_set(n_groups: int = 6, variants: int = 2, one_variant_key: bool = False) -> TrainingSet:
    """Items at the input size; ``one_variant_key`` makes every item a variant of one layout."""
    rng = np.random.default_rng(0)
    masks, prints, groups = [], [], []
    for g in range(n_groups):
        canvas = layout_canvas(rng)
        for _ in range(variants):
            mask, printed = variant_window(canvas, rng, INPUT_PX)
            masks.append(mask)
            prints.append(printed)
            groups.append(g)
    n = len(groups)
    group_codes = np.array(groups, dtype=np.int64)
    return TrainingSet(
        ids=[f"item{i}" for i in range(n)],
        masks=np.stack(masks),
        prints=np.stack(prints),
        groups=group_codes,
        families=np.zeros(n, dtype=np.int64),
        defects=np.zeros(n, dtype=np.int64),
        variant_keys=np.zeros(n, dtype=np.int64) if one_variant_key else group_codes.copy(),
    )


def make_objective(
    objective: str, data: TrainingSet, channels: str = "mask,print", augment: bool = False
) -> TrainingObjective:
    names = parse_channels(channels)
    mean, std = default_normalisation(names)
    shift, jitter = (1.5, 1.0) if augment else (0.0, 0.0)
    views = Views(data, names, mean, std, max_shift_px=shift, print_jitter=jitter)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_net(TINY, len(names), INPUT_PX)
    if objective == "crossview":
        return CrossViewObjective(views, net, temperature=0.2)
    return ContrastiveCrossViewObjective(views, net, temperature=0.2, crossview_weight=0.5)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def test_info_nce_leaves_same_group_keys_out_known_answer() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    keys = torch.tensor([[0.8, 0.6], [0.6, 0.8], [1.0, 0.0]])
    groups = torch.tensor([0, 0, 1])
    t = 0.5
    sims = (queries @ keys.T / t).tolist()
    expected = (
        _ce([sims[0][0], sims[0][2]], 0)  # key 1 is the same layout: neither positive nor negative
        + _ce([sims[1][1], sims[1][2]], 0)
        + _ce(sims[2], 2)  # another layout: every key takes part
    ) / 3
    assert info_nce(queries, keys, groups, t).item() == pytest.approx(expected, rel=1e-6)
    # with every item its own group, nothing is left out
    alone = torch.tensor([0, 1, 2])
    plain = sum(_ce(sims[i], i) for i in range(3)) / 3
    assert info_nce(queries, keys, alone, t).item() == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_items_of_one_variant_group_are_never_negatives(objective: str) -> None:
    """Every item a variant of one layout: all negatives are left out, so every InfoNCE is 0."""
    data = make_training_set(n_groups=3, one_variant_key=True)
    loss, parts = make_objective(objective, data).loss(np.arange(len(data)), torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert parts and all(v == pytest.approx(0.0, abs=1e-6) for v in parts.values())


@pytest.mark.parametrize("channels", ["mask,print", "mask,print,diff"])
def test_single_views_hide_the_other_image(channels: str) -> None:
    names = parse_channels(channels)
    crossview = CrossView(names, temperature=0.1)
    with torch.no_grad():
        crossview.mask_view_token.copy_(torch.arange(1.0, len(names)))
        crossview.print_view_token.copy_(-torch.arange(1.0, len(names)))
    x = torch.randn(2, len(names), 8, 8)
    only_mask = crossview.mask_view(x)
    only_print = crossview.print_view(x)
    torch.testing.assert_close(only_mask[:, 0], x[:, 0])
    torch.testing.assert_close(only_print[:, 1], x[:, 1])
    for c in range(1, len(names)):
        assert torch.all(only_mask[:, c] == float(c))  # print (and diff) -> the mask view token
    assert torch.all(only_print[:, 0] == -1.0)  # mask -> the print view token
    if len(names) == 3:
        assert torch.all(only_print[:, 2] == -2.0)  # the difference carries the mask too
    assert only_mask.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels", ["mask,print", "mask,print,diff"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_view_tokens_are_trained(objective: str, channels: str) -> None:
    data = make_training_set()
    obj = make_objective(objective, data, channels, augment=True)
    loss, parts = obj.loss(np.arange(len(data)), torch.Generator().manual_seed(0))
    loss.backward()
    crossview = obj.crossview
    assert isinstance(crossview, CrossView)
    for token in (crossview.mask_view_token, crossview.print_view_token):
        assert token.grad is not None and torch.isfinite(token.grad).all()
        assert torch.all(token.grad != 0)
    crossview_parts = {"mask_print", "full_mask", "full_print"}
    assert set(parts) == (crossview_parts | {"nt_xent"} if "contrastive" in objective else crossview_parts)
    # the tokens are the objective's, not the network's: checkpoints keep their layout
    assert not any("token" in name for name in obj.net.state_dict())
    assert {id(p) for p in crossview.parameters()} <= {id(p) for p in obj.parameters()}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_loss_is_finite_and_decreases(objective: str) -> None:
    data = make_training_set()
    obj = make_objective(objective, data)  # no augmentation, one partner per item: the same batch each step
    optimiser = torch.optim.Adam(obj.parameters(), lr=1e-3)
    batch = np.arange(len(data))
    losses = []
    for _ in range(6):
        loss, _parts = obj.loss(batch, torch.Generator().manual_seed(0))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize(
    ("objective", "channels"), [("crossview", "mask,print"), ("contrastive+crossview", "mask,print,diff")]
)
def test_train_encoder_writes_a_loadable_checkpoint(
    tmp_path: Path, dataset_dir: Path, objective: str, channels: str
) -> None:
    cfg = TrainConfig(
        objective=objective,
        arch=TINY,
        channels=channels,
        input_size=INPUT_PX,
        epochs=1,
        batch_size=16,
        crossview_weight=0.75,
        val_fraction=0.25,
        device="cpu",
        threads=1,
    )
    result = train_encoder(dataset_dir, tmp_path / "ckpt", cfg, progress=False)
    assert result.losses and all(np.isfinite(result.losses))
    loaded = load_encoder(tmp_path / "ckpt", device="cpu")
    assert loaded.model_version == result.metadata.model_version
    assert loaded.model_version.startswith(f"{TINY}-{objective}-")
    assert loaded.spec.objective == objective and loaded.channels == channels
    meta = json.loads((tmp_path / "ckpt" / METADATA_NAME).read_text())
    assert meta["objective"] == objective
    assert meta["training"]["config"]["crossview_weight"] == 0.75
    assert 0.0 <= meta["metrics"]["val_p_at_5"] <= 1.0


@pytest.mark.parametrize("weight", [0.0, -0.5, 10.5, float("nan"), float("inf")])
def test_invalid_crossview_weight_is_a_config_error(weight: float) -> None:
    with pytest.raises(ConfigError, match="crossview-weight"):
        TrainConfig(objective="contrastive+crossview", crossview_weight=weight).check()


def test_train_cli_takes_the_crossview_weight(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    base = ["train", "--dataset", str(tmp_path / "absent"), "--out", str(tmp_path / "ckpt"), "--no-progress"]
    args = parser.parse_args([*base, "--objective", "contrastive+crossview", "--crossview-weight", "2"])
    assert (args.objective, args.crossview_weight) == ("contrastive+crossview", 2.0)
    bad = parser.parse_args([*base, "--objective", "crossview", "--crossview-weight", "0"])
    with pytest.raises(ConfigError, match="crossview-weight"):  # refused before any data is read
        bad.func(bad)
