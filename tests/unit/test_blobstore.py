"""The blob store refuses every key or URI that escapes its root, tells bad input (a precise reason)
from a failing file system (transient), writes durably and collects old blobs."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from shared.blobstore import LocalBlobStore
from shared.errors import BlobAccessError, ImageError, InputError, StorageUnavailable, TransientError
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


# -- precise reasons: bad URIs and odd files are input errors, a failing file system is transient -----


def _reason_of(store: LocalBlobStore, uri: str) -> str:
    with pytest.raises(BlobAccessError) as caught:
        store.get(uri)
    return caught.value.reason


@pytest.mark.parametrize(
    "uri",
    [
        "file://%00/etc/passwd",
        "file:sub/a%00.png",
        "file:///x%0a.png",
        "blob://\x00",
        "file:sub/a.png\r\n",
        "file://[::1/x.png",  # unparsable netloc
        "file:" + "a" * 3000 + ".png",
    ],
)
def test_malformed_uris_are_invalid_input(tmp_path: Path, uri: str) -> None:
    assert _reason_of(LocalBlobStore(tmp_path / "blobs"), uri) == "blob_uri_invalid"


def test_a_directory_is_not_a_blob(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    (store.root / "sub").mkdir()
    key = "ab" * 32 + ".png"
    (store.root / key[:2] / key).mkdir(parents=True)
    assert _reason_of(store, "file:sub") == "blob_not_a_file"
    assert _reason_of(store, f"file://{store.root}") == "blob_not_a_file"
    assert _reason_of(store, f"blob://{key}") == "blob_not_a_file"


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    os.mkfifo(store.root / "pipe.png")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a blocking open would hang the test
        reason = pool.submit(_reason_of, store, "file:pipe.png").result(timeout=10)
    assert reason == "blob_not_a_file"


def test_a_fifo_swapped_in_after_the_check_is_refused(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    path = store.root / "swap.png"
    path.write_bytes(b"regular")
    real_lstat = os.lstat

    def lstat_then_swap(p: str | os.PathLike[str]) -> os.stat_result:
        result = real_lstat(p)
        path.unlink()
        os.mkfifo(path)
        return result

    monkeypatch.setattr("shared.blobstore.os.lstat", lstat_then_swap)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reason = pool.submit(_reason_of, store, "file:swap.png").result(timeout=10)
    assert reason == "blob_not_a_file"


def test_missing_blobs_keep_their_reason(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    (store.root / "file.png").write_bytes(b"x")
    assert _reason_of(store, "blob://" + "cd" * 32 + ".png") == "blob_missing"
    assert _reason_of(store, "file:nothing.png") == "blob_missing"
    assert _reason_of(store, "file:file.png/below.png") == "blob_missing"  # a file where a folder is


def test_paths_outside_the_root_are_escapes(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    (tmp_path / "outside.png").write_bytes(b"x")
    assert _reason_of(store, f"file://{tmp_path / 'outside.png'}") == "blob_escape"
    assert _reason_of(store, "file:../outside.png") == "blob_escape"


def test_a_symlink_loop_is_invalid(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    os.symlink(store.root / "loop-b", store.root / "loop-a")
    os.symlink(store.root / "loop-a", store.root / "loop-b")
    assert _reason_of(store, "file:loop-a") in {"blob_uri_invalid", "blob_missing"}


@pytest.mark.parametrize("code", [errno.EIO, errno.EACCES, errno.EPERM, errno.ESTALE])
def test_file_system_errors_on_read_are_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   code: int) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    data = b"some bytes"
    uri = store.put(data, sha256_hex(data), "bin")

    def failing_open(*args: object, **kwargs: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("shared.blobstore.os.open", failing_open)
    with pytest.raises(StorageUnavailable) as caught:
        store.get(uri)
    assert isinstance(caught.value, TransientError) and not isinstance(caught.value, InputError)


def test_an_io_error_while_reading_is_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    uri = store.put(b"abc", sha256_hex(b"abc"), "bin")

    def failing_read(fd: int, n: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("shared.blobstore.os.read", failing_read)
    with pytest.raises(StorageUnavailable):
        store.get(uri)


def test_a_blob_that_grew_over_the_limit_while_read_is_refused(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs", max_bytes=16)
    big = b"x" * 17
    key = sha256_hex(big) + ".bin"
    (store.root / key[:2]).mkdir()
    (store.root / key[:2] / key).write_bytes(big)
    assert _reason_of(store, f"blob://{key}") == "blob_too_large"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EACCES, errno.EROFS])
def test_a_failing_put_is_transient_and_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            code: int) -> None:
    store = LocalBlobStore(tmp_path / "blobs")

    def failing_fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("shared.blobstore.os.fsync", failing_fsync)
    with pytest.raises(StorageUnavailable):
        store.put(b"data", sha256_hex(b"data"), "bin")
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_put_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        calls.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr("shared.blobstore.os.fsync", fsync)
    monkeypatch.setattr("shared.blobstore.os.replace", replace)
    uri = store.put(b"durable", sha256_hex(b"durable"), "bin")
    assert calls[:3] == ["fsync-file", "rename", "fsync-dir"]
    assert store.get(uri) == b"durable"


def test_put_of_stored_content_refreshes_its_age(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    uri = store.put(b"again", sha256_hex(b"again"), "bin")
    path = store.resolve(uri)
    os.utime(path, (1000.0, 1000.0))
    assert store.put(b"again", sha256_hex(b"again"), "bin") == uri
    assert path.stat().st_mtime > 1000.0


def test_the_loader_keeps_the_store_s_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    ref = make_image_ref(image, store=store, inline_limit_bytes=10)
    assert ref.uri is not None
    store.resolve(ref.uri).unlink()
    with pytest.raises(BlobAccessError) as caught:
        ImageLoader(store)(ref)
    assert caught.value.reason == "blob_missing"

    def failing_lstat(p: object) -> os.stat_result:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("shared.blobstore.os.lstat", failing_lstat)
    with pytest.raises(TransientError):
        ImageLoader(store)(ref)


# -- collection ------------------------------------------------------------------------------------


def _aged(store: LocalBlobStore, data: bytes, mtime: float) -> Path:
    path = store.resolve(store.put(data, sha256_hex(data), "bin"))
    os.utime(path, (mtime, mtime))
    return path


def test_collect_removes_blobs_older_than_the_age_oldest_first(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    now = 1_000_000.0
    old = [_aged(store, f"old-{i}".encode(), now - 10 * 86400 - i) for i in range(3)]
    young = [_aged(store, f"young-{i}".encode(), now - 3600 * i) for i in range(2)]
    foreign = store.root / "farm" / "image.png"  # a file a file:// URI may name: not the store's
    foreign.parent.mkdir()
    foreign.write_bytes(b"farm data")
    os.utime(foreign, (0.0, 0.0))
    before = REGISTRY.get_sample_value("lithowatch_blobs_removed_total") or 0.0
    dry = store.collect(max_age_seconds=7 * 86400, dry_run=True, now=now)
    assert [b.path for b in dry.removed] == old[::-1] and all(p.exists() for p in old)
    done = store.collect(max_age_seconds=7 * 86400, now=now)
    assert [b.path for b in done.removed] == old[::-1] and {b.why for b in done.removed} == {"age"}
    assert not any(p.exists() for p in old) and all(p.exists() for p in young) and foreign.exists()
    assert (done.kept_count, done.kept_bytes) == (2, sum(p.stat().st_size for p in young))
    assert (REGISTRY.get_sample_value("lithowatch_blobs_removed_total") or 0.0) - before == 3


def test_collect_removes_the_oldest_until_the_rest_fit(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    paths = [_aged(store, bytes([i]) * 100, 5000.0 + i) for i in range(10)]  # 1000 bytes
    result = store.collect(max_total_bytes=450, now=6000.0)
    assert [b.path for b in result.removed] == paths[:6] and {b.why for b in result.removed} == {"size"}
    assert result.kept_bytes == 400 and result.removed_bytes == 600
    assert store.collect(max_total_bytes=450, now=6000.0).removed == []


def test_collect_removes_abandoned_temporary_files_only(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    (store.root / "ab").mkdir()
    abandoned, fresh = store.root / "ab" / ".tmp-dead", store.root / "ab" / ".tmp-live"
    abandoned.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(abandoned, (100.0, 100.0))
    os.utime(fresh, (100_000.0, 100_000.0))
    result = store.collect(now=100_000.0)
    assert [b.path for b in result.removed] == [abandoned] and fresh.exists()


def test_collect_keeps_a_blob_put_again_while_it_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    path = _aged(store, b"popular", 10.0)
    real_lstat = os.lstat

    def lstat_after_put(p: str | os.PathLike[str]) -> os.stat_result:
        store.put(b"popular", sha256_hex(b"popular"), "bin")  # another process uses it meanwhile
        return real_lstat(p)

    monkeypatch.setattr("shared.blobstore.os.lstat", lstat_after_put)
    result = store.collect(max_age_seconds=60.0, now=1_000_000.0)
    assert result.removed == [] and path.exists() and result.kept_count == 1
