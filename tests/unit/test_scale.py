"""Scale and resolution as inputs: clips resampled to the encoder's canonical nm_per_px.

Known answers come from one layout, drawn in nanometres and rasterised (with exact
area coverage) at two pixel sizes: after resampling, both give the network nearly
the same input, which the legacy resize-the-whole-clip path does not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from model_fixtures import one_torch_thread  # noqa: F401

from services.embed.core import EmbedCore, EmbedCoreSettings
from services.embed.stage import EmbedStage
from shared.contracts import AlignedResult, EmbeddedResult, Hashes, SimResult, Transform
from shared.dataset import DatasetWriter, read_dataset
from shared.errors import ConfigError, ImageError, InputError
from shared.imageref import ImageLoader
from shared.model import (
    EncoderSpec,
    build_untrained,
    embed_dataset,
    load_encoder,
    read_metadata,
    save_encoder,
)
from shared.model.checkpoint import METADATA_NAME
from shared.model.preprocess import default_normalisation, rescale_clip, resize_pairs
from shared.stage import Output
from shared.testing import make_result
from toolkit.training.data import load_training_set

TINY = "resnet18-w16"
# (x0, y0, x1, y1) in nm, on a 4 nm grid: some edges fall inside 8 nm pixels.
RECTS_NM: tuple[tuple[int, int, int, int], ...] = (
    (100, 120, 420, 180),
    (260, 300, 332, 700),
    (480, 80, 560, 620),
    (120, 520, 236, 644),
    (600, 440, 740, 500),
)


def rasterise(
    rects_nm: tuple[tuple[int, int, int, int], ...], extent_nm: int, nm_per_px: float
) -> np.ndarray:
    """Exact area coverage of the rectangles on a grid of ``nm_per_px`` pixels (1 nm supersampling)."""
    fine = np.zeros((extent_nm, extent_nm), dtype=np.float32)
    for x0, y0, x1, y1 in rects_nm:
        fine[y0:y1, x0:x1] = 1.0
    size_px = round(extent_nm / nm_per_px)
    return cv2.resize(fine, (size_px, size_px), interpolation=cv2.INTER_AREA)


def printed(mask: np.ndarray, nm_per_px: float) -> np.ndarray:
    """A stand-in print: the mask blurred by a fixed physical width (12 nm)."""
    blurred = cv2.GaussianBlur(mask, (0, 0), sigmaX=12.0 / nm_per_px)
    return np.clip(blurred, 0.0, 1.0).astype(np.float32)


# -- rescale_clip: known answers ---------------------------------------------------------------


def test_a_clip_at_8nm_and_the_same_layout_at_4nm_give_nearly_the_same_input() -> None:
    at_8 = rasterise(RECTS_NM, 768, 8.0)  # 96 px
    at_4 = rasterise(RECTS_NM, 768, 4.0)  # 192 px
    a = rescale_clip(at_8, 8.0, 8.0, 64)
    b = rescale_clip(at_4, 4.0, 8.0, 64)
    assert a.shape == b.shape == (64, 64) and a.dtype == b.dtype == np.float32
    assert np.abs(a - b).max() < 1e-5  # area averaging composes: 4 nm -> 8 nm is exact
    # enlarging (bilinear) 8 nm -> 4 nm lands near the 4 nm rasterisation
    up = rescale_clip(at_8, 8.0, 4.0, 128)
    ref = rescale_clip(at_4, 4.0, 4.0, 128)
    assert np.abs(up - ref).mean() < 0.05 and up.min() >= 0.0 and up.max() <= 1.0


def test_canonical_scale_sees_one_window_where_the_legacy_resize_does_not() -> None:
    """The same layout, 768 nm at 8 nm/px and its central 512 nm at 4 nm/px."""
    at_8 = rasterise(RECTS_NM, 768, 8.0)
    at_4_centre = np.ascontiguousarray(rasterise(RECTS_NM, 768, 4.0)[32:160, 32:160])  # 128 px, 512 nm
    masks, prints = [at_8, at_4_centre], [printed(at_8, 8.0), printed(at_4_centre, 4.0)]
    m, p = resize_pairs(masks, prints, 64, [8.0, 4.0], canonical_nm_per_px=8.0)
    assert np.abs(m[0] - m[1]).max() < 1e-5
    assert np.abs(p[0] - p[1]).mean() < 0.02  # the print is blurred at each resolution, then resampled
    legacy_m, _ = resize_pairs(masks, prints, 64)
    assert np.abs(legacy_m[0] - legacy_m[1]).mean() > 0.1  # 768 nm against 512 nm squeezed into 64 px


def test_the_network_gives_nearly_the_same_vector_for_both_resolutions() -> None:
    encoder = build_untrained(TINY, input_size=64, seed=2, device="cpu", nm_per_px=8.0)
    at_8 = rasterise(RECTS_NM, 768, 8.0)
    at_4 = rasterise(RECTS_NM, 768, 4.0)
    vectors = encoder.embed([at_8, at_4], [printed(at_8, 8.0), printed(at_4, 4.0)], [8.0, 4.0])
    assert float(vectors[0] @ vectors[1]) > 0.999


def test_a_large_clip_is_centre_cropped_exactly() -> None:
    clip = np.random.default_rng(0).random((100, 100), dtype=np.float32)
    np.testing.assert_array_equal(rescale_clip(clip, 8.0, 8.0, 64), clip[18:82, 18:82])


def test_a_small_clip_is_zero_padded_in_the_centre() -> None:
    clip = np.random.default_rng(1).random((40, 40), dtype=np.float32)
    out = rescale_clip(clip, 8.0, 8.0, 64)
    np.testing.assert_array_equal(out[12:52, 12:52], clip)
    out[12:52, 12:52] = 0.0
    assert not out.any()


def test_a_non_square_clip_is_padded_along_one_side_and_cropped_along_the_other() -> None:
    clip = np.random.default_rng(2).random((40, 100), dtype=np.float32)
    out = rescale_clip(clip, 8.0, 8.0, 64)
    np.testing.assert_array_equal(out[12:52], clip[:, 18:82])
    assert not out[:12].any() and not out[52:].any()


def test_shrinking_pads_what_is_left_of_the_window() -> None:
    """80 px at 4 nm (320 nm) is 40 px at 8 nm, padded to 64: the same as the 8 nm raster."""
    at_4 = rasterise(((40, 40, 280, 120),), 320, 4.0)
    at_8 = rasterise(((40, 40, 280, 120),), 320, 8.0)
    expected = np.zeros((64, 64), np.float32)
    expected[12:52, 12:52] = at_8
    np.testing.assert_allclose(rescale_clip(at_4, 4.0, 8.0, 64), expected, atol=1e-6)


def test_enlarging_a_large_clip_resamples_only_the_window_with_the_same_result() -> None:
    clip = np.random.default_rng(3).random((200, 200), dtype=np.float32)
    naive = cv2.resize(clip, (400, 400), interpolation=cv2.INTER_LINEAR)[168:232, 168:232]
    np.testing.assert_allclose(rescale_clip(clip, 8.0, 4.0, 64), naive, atol=1e-6)


def test_values_are_clipped_to_the_unit_interval() -> None:
    clip = np.zeros((96, 96), np.float32)
    clip[::2] = 1.0  # stripes: bilinear stays in range, area averaging too
    for nm_per_px, canonical in ((8.0, 4.0), (4.0, 8.0), (8.0, 2.5)):
        out = rescale_clip(clip, nm_per_px, canonical, 64)
        assert out.min() >= 0.0 and out.max() <= 1.0


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, 0.0, -4.0, math.nan, math.inf, True])
def test_a_missing_or_invalid_nm_per_px_is_refused(bad: Any) -> None:
    clip = np.zeros((64, 64), np.float32)
    with pytest.raises(ImageError, match="nm_per_px") as info:
        rescale_clip(clip, bad, 8.0, 64)
    assert info.value.reason == "image_scale" and repr(bad) in str(info.value)


@pytest.mark.parametrize(("nm_per_px", "factor"), [(200.0, "25"), (0.25, "0.03125")])
def test_a_resampling_factor_beyond_16_either_way_is_refused(nm_per_px: float, factor: str) -> None:
    clip = np.zeros((64, 64), np.float32)
    with pytest.raises(ImageError, match=rf"resampling by {factor} .* 8 nm/px") as info:
        rescale_clip(clip, nm_per_px, 8.0, 64)
    assert info.value.reason == "image_scale"
    # the limits themselves are allowed
    assert rescale_clip(np.zeros((64, 64), np.float32), 128.0, 8.0, 64).shape == (64, 64)


def test_a_clip_under_half_the_window_is_refused() -> None:
    with pytest.raises(ImageError, match=r"160x800 nm, under half of the model's 512 nm window") as info:
        rescale_clip(np.zeros((20, 100), np.float32), 8.0, 8.0, 64)
    assert info.value.reason == "image_scale"
    assert rescale_clip(np.zeros((32, 32), np.float32), 8.0, 8.0, 64).shape == (64, 64)  # exactly half


def test_a_canonical_encoder_needs_each_clips_scale() -> None:
    encoder = build_untrained(TINY, input_size=32, device="cpu", nm_per_px=8.0)
    clip = rasterise(RECTS_NM, 768, 8.0)
    with pytest.raises(ImageError, match="needs each clip's nm_per_px") as info:
        encoder.preprocess([clip], [clip])
    assert info.value.reason == "image_scale"
    with pytest.raises(ImageError, match="needs each clip's nm_per_px"):
        encoder.embed([clip], [clip])
    with pytest.raises(ImageError, match="1 clips but 2") as count:
        encoder.embed([clip], [clip], [8.0, 8.0])
    assert count.value.reason == "image_count"
    with pytest.raises(ImageError, match="item 1") as bad:
        encoder.preprocess([clip, clip], [clip, clip], [8.0, -1.0])
    assert bad.value.reason == "image_scale"


def test_an_invalid_canonical_scale_is_a_config_error() -> None:
    mean, std = default_normalisation(("mask", "print"))
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigError, match="nm_per_px"):
            EncoderSpec(TINY, ("mask", "print"), 32, mean, std, nm_per_px=bad)
    assert EncoderSpec(TINY, ("mask", "print"), 32, mean, std, nm_per_px=4.0).window_nm == 128.0


def test_a_legacy_encoder_ignores_the_scale() -> None:
    encoder = build_untrained(TINY, input_size=32, device="cpu")
    clip = rasterise(RECTS_NM, 768, 8.0)
    assert encoder.nm_per_px is None
    torch.testing.assert_close(encoder.preprocess([clip], [clip], [8.0]), encoder.preprocess([clip], [clip]))


# -- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_round_trip_records_and_loads_the_scale(tmp_path: Path) -> None:
    encoder = build_untrained(TINY, input_size=32, seed=1, device="cpu", nm_per_px=8.0)
    meta = save_encoder(encoder, tmp_path / "ckpt")
    raw = json.loads((tmp_path / "ckpt" / METADATA_NAME).read_text())
    assert raw["nm_per_px"] == 8.0 and meta.nm_per_px == 8.0
    loaded = load_encoder(tmp_path / "ckpt", device="cpu")
    assert loaded.nm_per_px == 8.0 and loaded.spec == encoder.spec
    assert loaded.model_version == encoder.model_version == meta.model_version
    clip = rasterise(RECTS_NM, 768, 4.0)
    np.testing.assert_array_equal(loaded.embed([clip], [clip], [4.0]), encoder.embed([clip], [clip], [4.0]))
    # the same weights without a canonical scale mean something else: another version
    legacy = build_untrained(TINY, input_size=32, seed=1, device="cpu")
    assert legacy.model_version != encoder.model_version
    assert legacy.model_version.split("-")[:-1] == encoder.model_version.split("-")[:-1]


def test_changing_the_recorded_scale_breaks_the_model_version(tmp_path: Path) -> None:
    save_encoder(build_untrained(TINY, input_size=32, device="cpu", nm_per_px=8.0), tmp_path / "ckpt")
    path = tmp_path / "ckpt" / METADATA_NAME
    raw = json.loads(path.read_text())
    raw["nm_per_px"] = 4.0
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="model_version"):
        load_encoder(tmp_path / "ckpt", device="cpu")
    raw["nm_per_px"] = -1.0
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="nm_per_px"):
        read_metadata(tmp_path / "ckpt")


def test_an_old_metadata_file_without_the_field_loads_on_the_legacy_path(tmp_path: Path) -> None:
    encoder = build_untrained(TINY, input_size=32, seed=4, device="cpu")
    save_encoder(encoder, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / METADATA_NAME
    raw = json.loads(path.read_text())
    assert "nm_per_px" not in raw  # legacy checkpoints are written as before
    path.write_text(json.dumps(raw))
    loaded = load_encoder(tmp_path / "ckpt", device="cpu")
    assert loaded.nm_per_px is None and loaded.model_version == encoder.model_version
    clip = rasterise(RECTS_NM, 768, 8.0)
    m, _ = resize_pairs([clip], [clip], 32)  # the whole clip squeezed into 32 px
    x = loaded.preprocess([clip], [clip], [8.0])
    torch.testing.assert_close(x[:, 0], (torch.from_numpy(m) - 0.5) / 0.5)
    raw["nm_per_px"] = None  # an explicit null reads the same
    path.write_text(json.dumps(raw))
    assert load_encoder(tmp_path / "ckpt", device="cpu").nm_per_px is None


# -- data sets: training and embedding see the same resampled clips ----------------------------


@pytest.fixture(scope="module")
def mixed_scale_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each layout twice: 768 nm at 8 nm/px and at 4 nm/px (npy, no quantisation)."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(7)
    with DatasetWriter(root, image_format="npy") as writer:
        for g in range(3):
            corners = rng.integers(0, 40, size=(6, 2)) * 16
            sizes = rng.integers(2, 20, size=(6, 2)) * 8
            rects = tuple(
                (int(x), int(y), int(x + w), int(y + h))
                for (x, y), (w, h) in zip(corners, sizes, strict=True)
            )
            for nm_per_px in (8.0, 4.0):
                mask = rasterise(rects, 768, nm_per_px)
                labels = {"group": f"g{g}"}
                writer.add(f"g{g}-{nm_per_px:g}nm", mask, printed(mask, nm_per_px), nm_per_px, labels)
    return root


def test_load_training_set_resamples_like_inference(mixed_scale_dir: Path) -> None:
    dataset = read_dataset(mixed_scale_dir)
    data = load_training_set(dataset, 32, progress=False, nm_per_px=16.0)
    assert data.masks.shape == (6, 32, 32)
    for g in range(3):
        assert np.abs(data.masks[2 * g] - data.masks[2 * g + 1]).max() < 1e-5
    encoder = build_untrained(TINY, input_size=32, device="cpu", nm_per_px=16.0)
    scales = [it.nm_per_px for it in dataset]
    x = encoder.preprocess(
        [it.load_mask() for it in dataset], [it.load_simulated() for it in dataset], scales
    )
    torch.testing.assert_close(x[:, 0], (torch.from_numpy(data.masks) - 0.5) / 0.5)
    torch.testing.assert_close(x[:, 1], (torch.from_numpy(data.prints) - 0.5) / 0.5)
    legacy = load_training_set(dataset, 32, progress=False)  # unchanged: whole clip resized
    item = dataset.items[1]
    whole, _ = resize_pairs([item.load_mask()], [item.load_simulated()], 32)
    np.testing.assert_array_equal(legacy.masks[1], whole[0])
    with pytest.raises(ConfigError, match=r"g0-8nm.*by 0\.04 ") as refused:
        load_training_set(dataset, 32, progress=False, nm_per_px=200.0)  # 8 -> 200 nm/px: factor 1/25
    assert isinstance(refused.value.__cause__, ImageError)
    with pytest.raises(ConfigError, match="canonical scale"):
        load_training_set(dataset, 32, progress=False, nm_per_px=-2.0)


def test_embed_dataset_passes_each_items_scale(mixed_scale_dir: Path) -> None:
    dataset = read_dataset(mixed_scale_dir)
    encoder = build_untrained(TINY, input_size=32, device="cpu", nm_per_px=16.0)
    vectors = embed_dataset(dataset, encoder, batch_size=4, progress=False)
    for g in range(3):
        assert float(vectors[2 * g] @ vectors[2 * g + 1]) > 0.999
    scales = [it.nm_per_px for it in dataset]
    direct = encoder.embed(
        [it.load_mask() for it in dataset], [it.load_simulated() for it in dataset], scales
    )
    np.testing.assert_allclose(vectors, direct, atol=1e-6)


# -- the embed stage: a clip of bad scale is dead-lettered alone -------------------------------


def _aligned(result: SimResult, nm_per_px: float) -> AlignedResult:
    return AlignedResult(
        **result.model_dump(exclude={"schema_version", "nm_per_px"}),
        nm_per_px=nm_per_px,
        hashes=Hashes(exact="0" * 64),
        aligned_simulated=result.simulated,
        transform=Transform.identity(),
    )


def test_the_embed_stage_dead_letters_only_the_clip_of_bad_scale() -> None:
    encoder = build_untrained(TINY, input_size=32, device="cpu", nm_per_px=8.0)  # a 256 nm window
    rng = np.random.default_rng(11)
    scales = [4.0, 500.0, 8.0, 1.0, 4.0]  # 500: factor 62.5; 1.0: 96 nm of layout, under 128
    items = [_aligned(make_result(f"s{i}", rng, size_px=96), s) for i, s in enumerate(scales)]
    load = ImageLoader()
    core = EmbedCore(encoder, EmbedCoreSettings(max_batch_size=2))
    results = EmbedStage(core, load).process_batch(items)
    rejected = {i: r for i, r in enumerate(results) if isinstance(r, InputError)}
    assert set(rejected) == {1, 3}
    assert all(r.reason == "image_scale" for r in rejected.values())
    assert "62.5" in str(rejected[1]) and "96x96 nm" in str(rejected[3])
    good = [0, 2, 4]
    expected = encoder.embed(
        [load(items[i].mask) for i in good],
        [load(items[i].aligned_simulated) for i in good],
        [scales[i] for i in good],
    )
    for row, i in enumerate(good):
        outputs = results[i]
        assert isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], Output)
        embedded = outputs[0].value
        assert isinstance(embedded, EmbeddedResult) and embedded.nm_per_px == scales[i]
        np.testing.assert_allclose(embedded.embedding.to_array(), expected[row], atol=1e-6)


def test_the_embed_core_refuses_a_batch_without_scales_or_with_a_bad_one() -> None:
    encoder = build_untrained(TINY, input_size=32, device="cpu", nm_per_px=8.0)
    core = EmbedCore(encoder)
    clip = rasterise(RECTS_NM, 768, 8.0)
    core.validate_item(clip, clip, 8.0)
    with pytest.raises(ImageError, match="nm_per_px") as missing:
        core.validate_item(clip, clip)
    assert missing.value.reason == "image_scale"
    with pytest.raises(ImageError, match="needs each clip's nm_per_px"):
        core.embed_batch([(clip, clip)])
    with pytest.raises(ImageError, match="item 1") as bad:
        core.embed_batch([(clip, clip), (clip, clip)], [8.0, 1000.0])
    assert bad.value.reason == "image_scale"
    assert core.embed_batch([(clip, clip)], [8.0]).shape == (1, encoder.dim)
    legacy = EmbedCore(build_untrained(TINY, input_size=32, device="cpu"))
    legacy.validate_item(clip, clip)  # a legacy encoder needs no scale
    assert legacy.embed_batch([(clip, clip)]).shape == (1, legacy.dim)
