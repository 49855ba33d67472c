"""NPY images from the network: a hostile header is bad input, never an allocation."""

from __future__ import annotations

import io

import numpy as np
import pytest

from shared.errors import ImageError
from shared.imaging import decode_image, encode_npy


def _npy_with_header(shape: tuple[int, ...], dtype: str = "<f4", payload: bytes = b"\x00" * 64) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": dtype, "fortran_order": False, "shape": shape})
    return stream.getvalue() + payload  # the header (magic included) and a few bytes of data


def test_a_header_declaring_a_huge_shape_is_refused_before_any_allocation() -> None:
    data = _npy_with_header((10**9, 10**9))
    with pytest.raises(ImageError) as caught:
        decode_image(data)
    assert caught.value.reason == "image_too_large" and "over the limit" in str(caught.value)


def test_a_corrupt_header_is_bad_input() -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(np.lib.format.magic(1, 0) + b"\x10\x00{'descr': garbage")
    assert caught.value.reason in ("image_corrupt", "image_truncated")


def test_a_good_npy_still_decodes() -> None:
    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    assert np.array_equal(decode_image(encode_npy(image)), image)


def test_a_cut_header_is_truncated_data() -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(encode_npy(np.zeros((8, 8), np.float32))[:40])
    assert caught.value.reason == "image_truncated"
