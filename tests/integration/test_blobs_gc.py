"""``lithowatch blobs gc`` on the real broker: the images of live library entries always stay."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from app.cli import main as cli_main
from app.launcher import EmbeddedStack
from services.novelty.library_cli import publish_entries
from shared.blobstore import LocalBlobStore
from shared.contracts import LibraryEntry, Vector
from shared.imageref import make_image_ref
from shared.imaging import sha256_hex
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration


def entry(entry_id: str, store: LocalBlobStore, seed: int) -> LibraryEntry:
    rng = np.random.default_rng(seed)
    mask, printed = rng.random((64, 64)), rng.random((64, 64))  # noise: never small enough to inline
    return LibraryEntry(
        entry_id=entry_id,
        vector=Vector.from_array(np.ones(8, dtype=np.float32) / np.sqrt(8)),
        model_version="m1",
        mask=make_image_ref(mask, "png", store, inline_limit_bytes=0),
        simulated=make_image_ref(printed, "png", store, inline_limit_bytes=0),
    )


def test_gc_keeps_the_images_of_live_library_entries_only(
    stack: EmbeddedStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    blobs = tmp_path / "blobs"
    monkeypatch.setenv("LITHOWATCH_BLOB_ROOT", str(blobs))
    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    settings = CommonSettings(kafka_bootstrap=stack.bootstrap, blob_root=blobs)
    store = LocalBlobStore(blobs)
    live, dropped = entry("live", store, 1), entry("dropped", store, 2)
    publish_entries(settings, [live, dropped])
    publish_entries(settings, [dropped.model_copy(update={"op": "delete", "vector": None})])  # a tombstone
    other = store.resolve(store.put(b"a dead letter's value", sha256_hex(b"a dead letter's value"), "bin"))
    paths = [store.resolve(ref.uri or "") for e in (live, dropped) for ref in (e.mask, e.simulated) if ref]
    for path in [*paths, other]:
        os.utime(path, (1_000_000.0, 1_000_000.0))  # all old enough to go

    assert cli_main(["blobs", "gc", "--max-age-days", "1"]) == 0
    out = capfd.readouterr().out
    assert "keeping 2 images of 1 library entries (lithowatch.library.v1)" in out
    assert paths[0].exists() and paths[1].exists()  # the live entry's mask and print
    assert not paths[2].exists() and not paths[3].exists() and not other.exists()
