"""`lithowatch library reembed` on the real broker: the new model's library beside the old one,
entries whose images are missing listed (exit 1), and a second run that only syncs what changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from app.launcher import EmbeddedStack
from services.novelty.library_cli import build_library
from services.novelty.reembed import read_library_records
from shared.blobstore import LocalBlobStore
from shared.contracts import Topics
from shared.dataset import DatasetWriter
from shared.index import library_topic
from shared.kafka_io import make_producer
from shared.model import build_untrained, load_encoder, save_encoder
from shared.settings import CommonSettings
from shared.testing import random_manhattan

pytestmark = pytest.mark.integration


def make_dataset(root: Path, count: int = 12) -> Path:
    rng = np.random.default_rng(0)
    with DatasetWriter(root) as writer:
        for i in range(count):
            mask = random_manhattan(rng, 48)
            writer.add(f"clip-{i:02d}", mask, mask * 0.9, 4.0, {"group": f"g{i // 2}"})
    return root


def test_reembed_publishes_the_new_library_beside_the_old_and_lists_what_it_left_out(
    stack: EmbeddedStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    dataset = make_dataset(tmp_path / "data")
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    save_encoder(build_untrained("resnet18", "mask,print", 32, seed=1), old_dir, {"objective": "untrained"})
    save_encoder(
        build_untrained("resnet18-w16", "mask,print", 32, seed=2), new_dir, {"objective": "untrained"}
    )
    blobs = tmp_path / "blobs"
    # every image in the blob store (inline limit 0), so one can go missing
    settings = CommonSettings(kafka_bootstrap=stack.bootstrap, blob_root=blobs, inline_image_limit_bytes=0)
    assert build_library(settings, dataset, old_dir) == 12
    old = read_library_records(settings, Topics.LIBRARY)
    lost_id = sorted(old.entries)[3]
    lost_mask = old.entries[lost_id].mask
    assert lost_mask is not None and lost_mask.uri is not None
    lost_path = LocalBlobStore(blobs).resolve(lost_mask.uri)
    saved = lost_path.read_bytes()
    lost_path.unlink()

    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    monkeypatch.setenv("LITHOWATCH_BLOB_ROOT", str(blobs))
    monkeypatch.chdir(tmp_path)
    new_model = load_encoder(new_dir, device="cpu").model_version
    topic = library_topic(new_model)
    args = ["library", "reembed", "--model", str(new_dir), "--device", "cpu", "--batch-size", "5"]
    assert main(args) == 1  # one entry left out
    out = capfd.readouterr().out
    assert f"on {topic}: 11 embedded" in out and "LEFT OUT 1 entries" in out and lost_id in out
    [listed] = [json.loads(line) for line in (tmp_path / "reembed-left-out.jsonl").read_text().splitlines()]
    assert listed["entry_id"] == lost_id and listed["reason"] == "blob_missing"
    assert f"LITHOWATCH_NOVELTY_LIBRARY_TOPICS={Topics.LIBRARY},{topic}" in out

    new = read_library_records(settings, topic)
    assert set(new.entries) == set(old.entries) - {lost_id}
    for entry_id, entry in new.entries.items():
        assert entry.model_version == new_model and entry.vector is not None
        assert entry.labels == old.entries[entry_id].labels and entry.mask == old.entries[entry_id].mask
    assert read_library_records(settings, Topics.LIBRARY).entries.keys() == old.entries.keys()  # untouched

    # the blob comes back, one entry is dropped from the old library: a second run syncs just that
    lost_path.write_bytes(saved)
    dropped_id = sorted(old.entries)[0]
    producer = make_producer(settings)
    producer.send(Topics.LIBRARY, key=dropped_id.encode(), value=None).get(timeout=30)
    producer.close()
    assert main(args) == 0
    out = capfd.readouterr().out
    assert "1 embedded, 0 republished, 10 unchanged, 1 dropped, 0 left out" in out
    assert set(read_library_records(settings, topic).entries) == set(old.entries) - {dropped_id}


def test_a_snapshot_written_by_a_second_build_holds_the_entries_of_the_first(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    from shared.index import LibraryState

    first, second = make_dataset(tmp_path / "first", 6), tmp_path / "second"
    with DatasetWriter(second) as writer:
        rng = np.random.default_rng(9)
        for i in range(4):
            mask = random_manhattan(rng, 48)
            writer.add(f"later-{i:02d}", mask, mask * 0.9, 4.0, {"group": f"h{i}"})
    model_dir = tmp_path / "model"
    save_encoder(build_untrained("resnet18", "mask,print", 32, seed=1), model_dir, {"objective": "untrained"})
    settings = CommonSettings(kafka_bootstrap=stack.bootstrap, blob_root=tmp_path / "blobs")
    assert build_library(settings, first, model_dir) == 6
    assert build_library(settings, second, model_dir, snapshot=tmp_path / "snap") == 4
    encoder = load_encoder(model_dir)
    state = LibraryState.restore(tmp_path / "snap", model_version=encoder.model_version, dim=encoder.dim)
    assert len(state) == 10  # a replica starting from it misses nothing published before
