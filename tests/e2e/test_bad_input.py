"""Bad input, kind by kind: a DLQ record with a precise reason, the stage alive, good messages still flow.

Most kinds go to the first stage (dedupe, topic ``results``); vector kinds go to
the novelty stage (topic ``embedded``). Each case is sent with its own key, so the
DLQ record names the case; the assertion is reason by reason.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.launcher import EmbeddedStack
from app.supervisor import Pipeline, http_status
from shared.contracts import DLQRecord, EmbeddedResult, ImageRef, ScoreRecord, Topics, UniqueResult, Vector
from shared.imaging import encode_png, sha256_hex
from shared.testing import collect, embedded_result, library_entry, make_result, produce

pytestmark = pytest.mark.e2e

MAX_MESSAGE_BYTES = 200_000
DIM = 8
MODEL = "test-model"


def _good_json() -> dict[str, Any]:
    return json.loads(make_result("template").model_dump_json())


def _ref(
    data: bytes, shape: tuple[int, int] = (64, 64), fmt: str = "png", dtype: str = "uint8"
) -> dict[str, Any]:
    return {
        "format": fmt,
        "sha256": sha256_hex(data),
        "shape": list(shape),
        "dtype": dtype,
        "inline_b64": base64.b64encode(data).decode("ascii"),
    }


def _uri_ref(uri: str) -> dict[str, Any]:
    return {"format": "png", "sha256": "0" * 64, "shape": [64, 64], "dtype": "uint8", "uri": uri}


def _with(**fields: Any) -> bytes:
    doc = _good_json()
    doc.update(fields)
    return json.dumps(doc).encode()


def _with_mask(ref: dict[str, Any]) -> bytes:
    return _with(mask=ref)


def _png(size: int = 64) -> bytes:
    return encode_png(np.zeros((size, size), np.float32))


def _bomb_png() -> bytes:
    """A PNG whose IHDR (valid checksum) declares 100000 x 100000 pixels."""
    signature = b"\x89PNG\r\n\x1a\n"
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return signature + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 1024))


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _bad_ihdr_crc() -> bytes:
    data = bytearray(_png())
    data[30] ^= 0xFF  # inside the IHDR checksum
    return bytes(data)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npy_object() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _nan_npy() -> bytes:
    image = np.zeros((64, 64), np.float32)
    image[3, 3] = np.nan
    return _npy(image)


def _inf_npy() -> bytes:
    image = np.zeros((64, 64), np.float32)
    image[0, 0] = np.inf
    return _npy(image)


def _npy_bomb() -> bytes:
    """A tiny NPY whose header declares a 100,000 x 100,000 float32 array (40 GB)."""
    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + b"\x00" * 16


def _npy_ref(data: bytes) -> dict[str, Any]:
    return _ref(data, fmt="npy", dtype="float32")


def _oversize() -> bytes:
    return _with(labels={"pad": "x" * 300_000})


def _other_size_print() -> bytes:
    data = _png(32)
    return _with(simulated=_ref(data, (32, 32)))


# (case id, expected reason, bytes for the results topic); blob cases take the blob root.
RESULT_CASES: list[tuple[str, str, Callable[[Path], bytes]]] = [
    ("invalid-json", "invalid_json", lambda _: b'{"result_id": "x", '),
    ("not-utf8", "invalid_json", lambda _: b"\xff\xfe\x00\x81garbage"),
    ("json-array", "schema", lambda _: b"[1, 2, 3]"),
    ("missing-field", "missing_field", lambda _: json.dumps({"result_id": "missing-field"}).encode()),
    ("wrong-type", "schema", lambda _: _with(nm_per_px="four")),
    ("negative-shape", "schema", lambda _: _with_mask({**_ref(_png()), "shape": [-1, 64]})),
    # an unknown field is read past (a newer minor version, docs/contracts.md); a newer major is not
    ("newer-major", "schema_version_unsupported", lambda _: _with(schema_version=2, surprise=1)),
    ("too-large", "too_large", lambda _: _oversize()),
    ("bad-base64", "base64", lambda _: _with_mask({**_ref(_png()), "inline_b64": "!!!not base64"})),
    ("empty-png", "image_empty", lambda _: _with_mask(_ref(b""))),
    ("truncated-png", "image_truncated", lambda _: _with_mask(_ref(_png()[:20]))),
    ("corrupt-png-ihdr", "image_corrupt", lambda _: _with_mask(_ref(_bad_ihdr_crc()))),
    ("corrupt-png-data", "image_corrupt", lambda _: _with_mask(_ref(_png()[:-30] + b"\x00" * 30))),
    ("not-an-image", "image_format", lambda _: _with_mask(_ref(b"GIF89a........"))),
    ("png-bomb", "image_too_large", lambda _: _with_mask(_ref(_bomb_png()))),
    ("declared-bomb", "image_too_large", lambda _: _with_mask(_ref(_png(), (100_000, 100_000)))),
    ("digest-mismatch", "image_digest", lambda _: _with_mask({**_ref(_png()), "sha256": "1" * 64})),
    ("declared-shape", "image_shape", lambda _: _with_mask(_ref(_png(), (64, 32)))),
    ("pair-shape", "shape_mismatch", lambda _: _other_size_print()),
    ("npy-nan", "image_nonfinite", lambda _: _with_mask(_ref(_nan_npy(), fmt="npy", dtype="float32"))),
    ("npy-inf", "image_nonfinite", lambda _: _with_mask(_ref(_inf_npy(), fmt="npy", dtype="float32"))),
    (
        "npy-dtype",
        "image_dtype",
        lambda _: _with_mask(_ref(_npy(np.zeros((64, 64), np.int64)), fmt="npy", dtype="float32")),
    ),
    (
        "npy-rank",
        "image_rank",
        lambda _: _with_mask(_ref(_npy(np.zeros((64, 64, 3), np.float32)), fmt="npy", dtype="float32")),
    ),
    (
        "npy-range",
        "image_range",
        lambda _: _with_mask(_ref(_npy(np.full((64, 64), 7.0, np.float32)), fmt="npy", dtype="float32")),
    ),
    ("npy-pickle", "image_pickle", lambda _: _with_mask(_npy_ref(_npy_object()))),
    ("npy-truncated-header", "image_truncated", lambda _: _with_mask(_npy_ref(_nan_npy()[:100]))),
    ("npy-truncated-data", "image_truncated", lambda _: _with_mask(_npy_ref(_nan_npy()[:-100]))),
    ("npy-corrupt-header", "image_corrupt", lambda _: _with_mask(_npy_ref(_nan_npy()[:10] + b"!" * 200))),
    ("uri-scheme", "blob_scheme", lambda _: _with_mask(_uri_ref("ftp://example.com/a.png"))),
    ("uri-http", "blob_remote", lambda _: _with_mask(_uri_ref("http://127.0.0.1:1/a.png"))),
    ("uri-https", "blob_remote", lambda _: _with_mask(_uri_ref("https://example.com/a.png"))),
    ("uri-dotdot", "blob_escape", lambda _: _with_mask(_uri_ref("file://../../../../etc/passwd"))),
    ("uri-dotdot-path", "blob_escape", lambda _: _with_mask(_uri_ref("file:///../../etc/passwd"))),
    ("uri-absolute", "blob_escape", lambda _: _with_mask(_uri_ref("file:///etc/passwd"))),
    ("uri-remote-host", "blob_escape", lambda _: _with_mask(_uri_ref("file://evil.example/etc/passwd"))),
    ("uri-symlink", "blob_escape", lambda root: _with_mask(_uri_ref(f"file://{root / 'escape-link'}"))),
    ("blob-key-escape", "blob_key", lambda _: _with_mask(_uri_ref("blob://../../etc/passwd"))),
    ("blob-missing", "blob_missing", lambda _: _with_mask(_uri_ref("blob://" + "ab" * 32 + ".png"))),
    ("npy-bomb", "image_too_large", lambda _: _with_mask(_npy_ref(_npy_bomb()))),
    ("uri-nul", "blob_uri_invalid", lambda root: _with_mask(_uri_ref(f"file://{root}/a%00.png"))),
    ("uri-directory", "blob_not_a_file", lambda root: _with_mask(_uri_ref(f"file://{root / 'a-folder'}"))),
    ("uri-fifo", "blob_not_a_file", lambda root: _with_mask(_uri_ref(f"file://{root / 'a-fifo'}"))),
]


def _vector_case(result_id: str, **change: Any) -> bytes:
    good = embedded_result(result_id, np.ones(DIM, np.float32), model_version=MODEL)
    doc = json.loads(good.model_dump_json())
    doc.update(change)
    return json.dumps(doc).encode()


def _raw_vector(values: np.ndarray, dim: int | None = None) -> dict[str, Any]:
    raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return {"dim": dim or int(values.shape[0]), "b64": base64.b64encode(raw).decode("ascii")}


EMBEDDED_CASES: list[tuple[str, str, Callable[[], bytes]]] = [
    ("vec-dim", "vector_dim", lambda: _vector_case("vec-dim", embedding=_raw_vector(np.ones(4) / 2.0))),
    (
        "vec-bytes",
        "vector_dim",
        lambda: _vector_case("vec-bytes", embedding=_raw_vector(np.ones(4) / 2.0, DIM)),
    ),
    # another model's result waits for its library; a retired model's is dead-lettered
    ("vec-model", "model_retired", lambda: _vector_case("vec-model", model_version="retired-model")),
    (
        "vec-nan",
        "vector_nonfinite",
        lambda: _vector_case("vec-nan", embedding=_raw_vector(np.full(DIM, np.nan))),
    ),
    ("vec-norm", "vector_norm", lambda: _vector_case("vec-norm", embedding=_raw_vector(np.full(DIM, 3.0)))),
    ("vec-base64", "base64", lambda: _vector_case("vec-base64", embedding={"dim": DIM, "b64": "%%%%"})),
    ("vec-major", "schema_version_unsupported", lambda: _vector_case("vec-major", schema_version=2)),
]


def test_every_kind_of_bad_input_is_dlqd_with_its_reason(stack: EmbeddedStack, tmp_path: Path) -> None:
    blob_root = stack.workdir / "blobs"
    blob_root.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png())
    (blob_root / "escape-link").symlink_to(outside)
    (blob_root / "a-folder").mkdir()
    os.mkfifo(blob_root / "a-fifo")  # opened for reading, it would block the stage for ever

    rng = np.random.default_rng(0)
    library = [library_entry(f"lib-{i}", rng.normal(size=DIM), model_version=MODEL) for i in range(20)]
    produce(stack.bootstrap, Topics.LIBRARY, library)

    env = {
        "LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000",
        "LITHOWATCH_SESSION_TIMEOUT_MS": "6000",
        "LITHOWATCH_KAFKA_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
        "LITHOWATCH_MODEL_VERSION": MODEL,
        "LITHOWATCH_NOVELTY_RETIRED_MODELS": "retired-model",
        "LITHOWATCH_SNAPSHOT_DIR": str(tmp_path / "snapshots"),
    }
    pipeline = Pipeline(stack, service_env=env)
    try:
        dedupe = pipeline.start_service("dedupe")
        novelty = pipeline.start_service("novelty")
        pipeline.wait_ready(180)

        bad_results = [(case, build(blob_root)) for case, _, build in RESULT_CASES]
        assert len(dict(bad_results)["too-large"]) > MAX_MESSAGE_BYTES  # really over the limit
        produce(stack.bootstrap, Topics.RESULTS, bad_results)
        produce(stack.bootstrap, Topics.EMBEDDED, [(case, build()) for case, _, build in EMBEDDED_CASES])
        produce(stack.bootstrap, Topics.RESULTS, [make_result("good-after-bad")])
        produce(
            stack.bootstrap,
            Topics.EMBEDDED,
            [embedded_result("good-vector", rng.normal(size=DIM), model_version=MODEL)],
        )
        expected = {case: reason for case, reason, _ in [*RESULT_CASES, *EMBEDDED_CASES]}

        def done(records: list[Any]) -> bool:
            topics = [r.topic for r in records]
            return (
                topics.count(Topics.DLQ) >= len(expected)
                and Topics.UNIQUE in topics
                and Topics.SCORES in topics
            )

        records = collect(stack.bootstrap, [Topics.DLQ, Topics.UNIQUE, Topics.SCORES], done, 180)
        alive = {s.name: s.process.alive() and http_status(s.health_url) == 200 for s in (dedupe, novelty)}
    finally:
        pipeline.stop()

    dlq = [DLQRecord.model_validate_json(r.value) for r in records if r.topic == Topics.DLQ]
    got = {(d.key_b64 and base64.b64decode(d.key_b64).decode()): d for d in dlq}
    table = [(case, want, got[case].reason if case in got else None) for case, want in expected.items()]
    print("\ncase | expected reason | DLQ reason")
    for row in table:
        print(" | ".join(str(v) for v in row))
    assert [row for row in table if row[1] != row[2]] == []
    assert len(dlq) == len(expected), "one DLQ record per bad message"
    stages = {case: got[case].stage for case in expected}
    assert {stages[c] for c, _, _ in RESULT_CASES} == {"dedupe"}
    assert {stages[c] for c, _, _ in EMBEDDED_CASES} == {"novelty"}
    assert all(got[c].value_b64 or got[c].value_uri for c in expected), "original bytes kept"
    unique = [UniqueResult.model_validate_json(r.value) for r in records if r.topic == Topics.UNIQUE]
    scores = [ScoreRecord.model_validate_json(r.value) for r in records if r.topic == Topics.SCORES]
    assert [u.result_id for u in unique] == ["good-after-bad"]
    assert [s.result_id for s in scores] == ["good-vector"]
    assert alive == {"dedupe": True, "novelty": True}


def test_cases_are_valid_test_data() -> None:
    """The bad cases differ from a good message only in what they break."""
    assert EmbeddedResult.model_validate_json(_vector_case("ok"))
    assert ImageRef.model_validate(_ref(_png()))
    assert Vector.model_validate(_raw_vector(np.ones(DIM)))
    names = [c for c, _, _ in RESULT_CASES] + [c for c, _, _ in EMBEDDED_CASES]
    assert len(set(names)) == len(names)
