"""Making and resolving :class:`~shared.contracts.ImageRef` values.

Small images travel inline; larger ones go to the blob store and travel by URI
(:mod:`shared.blobstore` says which blob failures are bad input and which are transient).
"""

from __future__ import annotations

import base64

import numpy as np

from shared.blobstore import BlobStore
from shared.contracts import ImageRef
from shared.errors import BlobAccessError, ImageError
from shared.imaging import MAX_PIXELS_DEFAULT, ImageFormat, decode_image, encode_image, sha256_hex

INLINE_LIMIT_BYTES_DEFAULT = 96 * 1024


def make_image_ref(
    image: np.ndarray,
    fmt: ImageFormat = "png",
    store: BlobStore | None = None,
    inline_limit_bytes: int = INLINE_LIMIT_BYTES_DEFAULT,
) -> ImageRef:
    """Encode ``image`` ([0, 1] float) and wrap it, inline when small or no store is given."""
    data = encode_image(image, fmt)
    digest = sha256_hex(data)
    dtype = "uint8" if fmt == "png" else "float32"
    shape = (int(image.shape[0]), int(image.shape[1]))
    if store is None or len(data) <= inline_limit_bytes:
        return ImageRef(
            format=fmt,
            sha256=digest,
            shape=shape,
            dtype=dtype,
            inline_b64=base64.b64encode(data).decode("ascii"),
        )
    uri = store.put(data, digest, fmt)
    return ImageRef(format=fmt, sha256=digest, shape=shape, dtype=dtype, uri=uri)


class ImageLoader:
    """Resolves and decodes ImageRefs, checking the digest and declared shape."""

    def __init__(self, store: BlobStore | None = None, max_pixels: int = MAX_PIXELS_DEFAULT) -> None:
        self.store = store
        self.max_pixels = max_pixels

    def raw_bytes(self, ref: ImageRef) -> bytes:
        """The encoded bytes, inline or from the store (whose errors keep their reasons: a bad or
        missing blob is an InputError, a failing file system a TransientError)."""
        if ref.inline_b64 is not None:
            return ref.inline_bytes()
        if ref.uri is None:
            raise BlobAccessError("image reference has neither inline bytes nor a URI", reason="blob_uri")
        if self.store is None:
            raise BlobAccessError(f"no blob store configured for {ref.uri!r}", reason="blob_uri")
        return self.store.get(ref.uri)

    def __call__(self, ref: ImageRef) -> np.ndarray:
        h, w = ref.shape
        if h * w > self.max_pixels:
            raise ImageError(
                f"declared shape {ref.shape} is over {self.max_pixels} pixels", reason="image_too_large"
            )
        data = self.raw_bytes(ref)
        if sha256_hex(data) != ref.sha256:
            raise ImageError("image bytes do not match their sha256", reason="image_digest")
        image = decode_image(data, max_pixels=self.max_pixels)
        if image.shape != (h, w):
            raise ImageError(
                f"decoded shape {image.shape} differs from declared {ref.shape}", reason="image_shape"
            )
        return image
