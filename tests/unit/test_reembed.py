"""Re-embedding a library with a new model: the plan (what to embed, carry, drop) and the embedding
itself, with entries whose images are missing listed, never dropped silently (no broker)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_fixtures import make_dataset

from services.novelty.reembed import LeftOut, LibraryRecords, plan_reembed, reembed_entries
from shared.blobstore import LocalBlobStore
from shared.contracts import Hashes, LibraryEntry, Vector
from shared.dataset import read_dataset
from shared.imageref import ImageLoader, make_image_ref
from shared.model import build_untrained

OLD = "old-model"


def entries_of(root: Path, blobs: LocalBlobStore, count: int = 8) -> list[LibraryEntry]:
    dataset = read_dataset(make_dataset(root, n_groups=count // 2, variants=2))
    rng = np.random.default_rng(0)
    out = []
    for i, item in enumerate(dataset.items[:count]):
        # every other entry's images go to the blob store (inline limit 0), the rest inline
        limit = 0 if i % 2 else 1 << 20
        out.append(
            LibraryEntry(
                entry_id=item.id,
                vector=Vector.from_array(rng.standard_normal(8).astype(np.float32)),
                model_version=OLD,
                labels=dict(item.labels),
                mask=make_image_ref(item.load_mask(), "png", blobs, limit),
                simulated=make_image_ref(item.load_simulated(), "png", blobs, limit),
                hashes=Hashes(exact=f"{i:064d}"),
                nm_per_px=item.nm_per_px,
            )
        )
    return out


def test_every_entry_is_embedded_by_the_new_model_and_missing_images_are_listed(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    entries = entries_of(tmp_path / "data", blobs)
    lost = entries[1]
    assert lost.mask is not None and lost.mask.uri is not None
    blobs.resolve(lost.mask.uri).unlink()  # its mask is gone from the blob store
    encoder = build_untrained("resnet18", "mask,print", 32, seed=3)
    left_out: list[LeftOut] = []
    done: list[int] = []
    out = list(
        reembed_entries(entries, encoder, ImageLoader(blobs), left_out, batch_size=3, progress=done.append)
    )
    assert [e.entry_id for e in out] == [e.entry_id for e in entries if e is not lost]
    assert [(item.entry_id, item.reason) for item in left_out] == [(lost.entry_id, "blob_missing")]
    assert sum(done) == len(entries)
    for before, after in zip([e for e in entries if e is not lost], out, strict=True):
        assert after.model_version == encoder.model_version and after.vector is not None
        assert after.vector.dim == encoder.dim
        assert np.isclose(np.linalg.norm(after.vector.to_array()), 1.0, atol=1e-4)
        # everything else is carried as it was
        same = {"entry_id", "labels", "mask", "simulated", "hashes", "status", "nm_per_px", "created_at"}
        assert after.model_dump(include=same) == before.model_dump(include=same)
    # the same images through the encoder directly give the same vectors
    loader = ImageLoader(blobs)
    first = out[0]
    assert first.mask is not None and first.simulated is not None
    direct = encoder.embed([loader(first.mask)], [loader(first.simulated)])[0]
    assert first.vector is not None and np.allclose(first.vector.to_array(), direct, atol=1e-5)


def test_a_model_with_a_canonical_scale_needs_each_entrys_scale(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    entries = entries_of(tmp_path / "data", blobs, count=4)
    unscaled = entries[0].model_copy(update={"nm_per_px": None})
    encoder = build_untrained("resnet18", "mask,print", 32, seed=3, nm_per_px=4.0)
    left_out: list[LeftOut] = []
    out = list(reembed_entries([unscaled, *entries[1:]], encoder, ImageLoader(blobs), left_out))
    assert len(out) == 3 and [(i.entry_id, i.reason) for i in left_out] == [(unscaled.entry_id, "no_scale")]
    left_out.clear()
    out = list(reembed_entries([unscaled], encoder, ImageLoader(blobs), left_out, default_nm_per_px=4.0))
    assert len(out) == 1 and left_out == []


def _entry(entry_id: str, model: str, sha: str = "a", **update: object) -> LibraryEntry:
    image = make_image_ref(np.zeros((8, 8), np.float32))
    entry = LibraryEntry(
        entry_id=entry_id,
        vector=Vector.from_array(np.ones(4, np.float32) / 2),
        model_version=model,
        mask=image.model_copy(update={"sha256": sha * 64}),
        simulated=image,
    )
    return entry.model_copy(update=update)


def test_a_second_run_embeds_only_what_changed_and_carries_drops_over() -> None:
    new = "new-model"
    source = LibraryRecords(
        {
            "same": _entry("same", OLD),
            "promoted": _entry("promoted", OLD, status="reference"),
            "changed": _entry("changed", OLD, sha="b"),
            "fresh": _entry("fresh", OLD),
            "no-images": _entry("no-images", OLD, mask=None, simulated=None),
            "stray": _entry("stray", "third-model"),
            "native": _entry("native", new),
        },
        dropped={"gone", "never-there"},
    )
    target = LibraryRecords(
        {
            "same": _entry("same", new),
            "promoted": _entry("promoted", new, status="provisional"),
            "changed": _entry("changed", new, sha="a"),
            "gone": _entry("gone", new),
            "added-by-novelty": _entry("provisional/r1", new, status="provisional"),
        },
        dropped=set(),
    )
    plan = plan_reembed(source, target, OLD, new)
    assert sorted(e.entry_id for e in plan.embed) == ["changed", "fresh"]
    assert sorted(e.entry_id for e in plan.republish) == ["native", "promoted"]
    promoted = next(e for e in plan.republish if e.entry_id == "promoted")
    assert promoted.status == "reference" and promoted.model_version == new  # the new vector is kept
    assert plan.unchanged == 1
    assert plan.drop == ["gone"]  # dropped from the old library; novelty's own entries stay
    assert sorted((i.entry_id, i.reason) for i in plan.left_out) == [
        ("no-images", "no_images"),
        ("stray", "other_model"),
    ]


def test_batch_size_must_be_positive(tmp_path: Path) -> None:
    encoder = build_untrained("resnet18", "mask,print", 32, seed=3)
    with pytest.raises(Exception, match="batch size"):
        list(reembed_entries([], encoder, ImageLoader(None), [], batch_size=0))


def test_the_new_models_thresholds_come_from_lithowatch_calibrate(tmp_path: Path) -> None:
    from services.novelty.library_cli import calibrate_command, run_calibrate
    from shared.index.thresholds import load_thresholds
    from shared.model import save_encoder

    dataset = make_dataset(tmp_path / "labelled", n_groups=12, variants=4)
    encoder = build_untrained("resnet18", "mask,print", 32, seed=5)
    save_encoder(encoder, tmp_path / "new", {"objective": "untrained"})
    out = tmp_path / "thresholds-new.json"
    extra = ["--holdout-label", "family", "--holdout-values", "dots", "--per-cluster", "off"]
    assert run_calibrate(calibrate_command(dataset, tmp_path / "new", out, extra)) == 0
    thresholds = load_thresholds(out)
    assert thresholds.model_version == encoder.model_version and thresholds.embedding_dim == encoder.dim
