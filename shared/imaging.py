"""Image encoding and decoding with the checks the pipeline relies on.

In memory an image is a 2-D ``float32`` array in ``[0, 1]`` (C-contiguous).
On disk and on the wire it is a PNG (8- or 16-bit grayscale) or an ``.npy``
float32 array. Decoding never trusts the bytes: the declared size is checked
before any pixel is decompressed (decompression bombs), NPY files are read with
``allow_pickle=False`` and must be finite.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tokenize
import zlib
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from shared.errors import ConfigError, ImageError

ImageFormat = Literal["png", "npy"]
MAX_PIXELS_DEFAULT = 4096 * 4096
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixel_digest(image: np.ndarray) -> str:
    """Digest of canonical pixel content: 8-bit quantised, independent of encoding."""
    quantised = np.ascontiguousarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8))
    header = f"{quantised.shape[0]}x{quantised.shape[1]}:".encode()
    return hashlib.sha256(header + quantised.tobytes()).hexdigest()


def sniff_format(data: bytes) -> ImageFormat:
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(NPY_MAGIC):
        return "npy"
    if not data:
        raise ImageError("empty image bytes", reason="image_empty")
    raise ImageError("unknown image format (expected PNG or NPY)", reason="image_format")


def _png_dimensions(data: bytes) -> tuple[int, int, int, int]:
    """Width, height, bit depth and colour type from the IHDR chunk."""
    if len(data) < 33:
        raise ImageError("truncated PNG (no IHDR)", reason="image_truncated")
    length, chunk_type = struct.unpack(">I4s", data[8:16])
    if chunk_type != b"IHDR" or length != 13:
        raise ImageError("corrupt PNG (first chunk is not IHDR)", reason="image_corrupt")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    crc = struct.unpack(">I", data[29:33])[0]
    if zlib.crc32(data[12:29]) & 0xFFFFFFFF != crc:
        raise ImageError("corrupt PNG (IHDR checksum)", reason="image_corrupt")
    return width, height, bit_depth, colour_type


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """Decode PNG or NPY bytes to a float32 image in [0, 1]."""
    fmt = sniff_format(data)
    if fmt == "png":
        width, height, _bit_depth, colour_type = _png_dimensions(data)
        if width == 0 or height == 0:
            raise ImageError("PNG with zero width or height", reason="image_empty")
        if width * height > max_pixels:
            raise ImageError(
                f"PNG declares {width}x{height} pixels, over the limit of {max_pixels}",
                reason="image_too_large",
            )
        if colour_type not in (0, 4) and colour_type not in (2, 6):
            raise ImageError(f"unsupported PNG colour type {colour_type}", reason="image_format")
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None:
            raise ImageError("corrupt or truncated PNG data", reason="image_corrupt")
        if decoded.ndim == 3:
            if decoded.shape[2] == 4:
                decoded = decoded[:, :, :3]
            decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2GRAY)
        if decoded.dtype == np.uint8:
            return (decoded.astype(np.float32) / 255.0).copy(order="C")
        if decoded.dtype == np.uint16:
            return (decoded.astype(np.float32) / 65535.0).copy(order="C")
        raise ImageError(f"unsupported PNG dtype {decoded.dtype}", reason="image_dtype")
    _check_npy_header(data, max_pixels)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        # numpy reports a short read as ValueError("EOF: ...") and object arrays as a pickle refusal
        message = str(exc)
        if message.startswith("EOF"):
            raise ImageError(f"truncated NPY data: {exc}", reason="image_truncated") from exc
        if "allow_pickle" in message:
            raise ImageError(f"NPY of objects refused (no pickle): {exc}", reason="image_pickle") from exc
        raise ImageError(f"corrupt NPY data: {exc}", reason="image_corrupt") from exc
    except (OSError, EOFError) as exc:
        raise ImageError(f"truncated NPY data: {exc}", reason="image_truncated") from exc
    return validate_image(array, max_pixels=max_pixels)


def _check_npy_header(data: bytes, max_pixels: int) -> None:
    """Refuse an NPY whose header declares more pixels than allowed, before numpy allocates them.

    ``np.load`` on bytes allocates the declared shape first: a header claiming 10^9 x 10^9
    pixels would be a MemoryError (an infrastructure failure) instead of bad input.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as exc:
        if isinstance(exc, EOFError) or str(exc).startswith("EOF"):  # numpy's word for a short read
            raise ImageError(f"truncated NPY data: {exc}", reason="image_truncated") from exc
        raise ImageError(f"corrupt NPY header: {exc}", reason="image_corrupt") from exc
    pixels = int(np.prod(shape, dtype=np.float64)) if shape else 1
    if pixels > max_pixels:
        raise ImageError(
            f"NPY declares shape {shape}, {pixels} pixels, over the limit of {max_pixels}",
            reason="image_too_large",
        )
    if dtype.hasobject:
        raise ImageError("NPY of objects refused (no pickle)", reason="image_pickle")


def validate_image(array: np.ndarray, max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """Check an in-memory image and return it as C-contiguous float32 in [0, 1]."""
    if not isinstance(array, np.ndarray):
        raise ImageError("image is not an array", reason="image_dtype")
    if array.ndim != 2:
        raise ImageError(f"image must be 2-D, got rank {array.ndim}", reason="image_rank")
    if array.size == 0:
        raise ImageError("image has no pixels", reason="image_empty")
    if array.size > max_pixels:
        raise ImageError(f"image of {array.shape} is over {max_pixels} pixels", reason="image_too_large")
    if array.dtype == np.uint8:
        return (array.astype(np.float32) / 255.0).copy(order="C")
    if array.dtype == np.uint16:
        return (array.astype(np.float32) / 65535.0).copy(order="C")
    if array.dtype not in (np.float32, np.float64):
        raise ImageError(f"unsupported image dtype {array.dtype}", reason="image_dtype")
    if not np.isfinite(array).all():
        raise ImageError("image contains NaN or infinity", reason="image_nonfinite")
    out = np.ascontiguousarray(array, dtype=np.float32)
    lo, hi = float(out.min()), float(out.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise ImageError(
            f"float image values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]", reason="image_range"
        )
    return np.clip(out, 0.0, 1.0)


def encode_png(image: np.ndarray, bits: Literal[8, 16] = 8) -> bytes:
    """Encode a [0, 1] float image (or uint8/uint16) as grayscale PNG."""
    if image.dtype in (np.uint8, np.uint16):
        pixels = image
    else:
        scale = 255.0 if bits == 8 else 65535.0
        dtype = np.uint8 if bits == 8 else np.uint16
        pixels = np.clip(np.rint(np.asarray(image, dtype=np.float32) * scale), 0, scale).astype(dtype)
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(pixels), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ImageError("PNG encoding failed", reason="image_encode")
    return bytes(buffer.tobytes())


def encode_npy(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(image, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def encode_image(image: np.ndarray, fmt: ImageFormat = "png") -> bytes:
    return encode_png(image) if fmt == "png" else encode_npy(image)


def read_image_file(path: str | Path, max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read image ({exc.strerror})") from exc
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def write_image_file(path: str | Path, image: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt: ImageFormat = "npy" if path.suffix.lower() == ".npy" else "png"
    path.write_bytes(encode_image(image, fmt))


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
