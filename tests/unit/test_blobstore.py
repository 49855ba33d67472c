"""The blob store refuses every key or URI that escapes its root."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from shared.blobstore import LocalBlobStore
from shared.errors import BlobAccessError, ImageError
from shared.imageref import ImageLoader, make_image_ref
from shared.imaging import sha256_hex


def test_put_get_by_content_hash(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    data = b"\x89PNG fake"
    uri = store.put(data, sha256_hex(data), "png")
    assert uri == f"blob://{sha256_hex(data)}.png"
    assert store.get(uri) == data
    assert store.put(data, sha256_hex(data), "png") == uri  # idempotent


@pytest.mark.parametrize(
    "uri",
    [
        "file://../outside.png",
        "file:///etc/passwd",
        "file://%2e%2e/%2e%2e/etc/passwd",
        "blob://../../etc/passwd",
        "blob://" + "a" * 64 + ".sh",
        "http://example.invalid/x.png",
        "https://example.invalid/x.png",
        "s3://bucket/x.png",
        "ftp://host/x",
        "no-scheme-at-all",
        "file://remotehost/x.png",
    ],
)
def test_escapes_and_foreign_schemes_are_refused(tmp_path: Path, uri: str) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(BlobAccessError):
        store.get(uri)


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    os.symlink(secret, tmp_path / "blobs" / "link.png")
    with pytest.raises(BlobAccessError):
        store.get(f"file://{store.root}/link.png")


def test_file_uri_inside_the_root_is_allowed(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    (tmp_path / "blobs" / "sub").mkdir()
    (tmp_path / "blobs" / "sub" / "a.png").write_bytes(b"ok")
    assert store.get(f"file://{store.root}/sub/a.png") == b"ok"
    assert store.get("file:sub/a.png") == b"ok"


def test_large_images_go_to_the_store_and_come_back(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    image = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    ref = make_image_ref(image, store=store, inline_limit_bytes=100)
    assert ref.uri is not None and ref.inline_b64 is None
    loaded = ImageLoader(store)(ref)
    assert np.allclose(loaded, image, atol=1 / 255)


def test_digest_mismatch_is_refused(tmp_path: Path) -> None:
    ref = make_image_ref(np.zeros((8, 8), np.float32))
    tampered = ref.model_copy(update={"sha256": "f" * 64})
    with pytest.raises(ImageError):
        ImageLoader()(tampered)
