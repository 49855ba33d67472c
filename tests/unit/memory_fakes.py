"""In-memory fakes of the image loader and the blob store for the cores' unit tests."""

from __future__ import annotations

import numpy as np

from shared.contracts import ImageRef
from shared.errors import ImageError, InputError
from shared.imaging import decode_image, encode_image, sha256_hex


class MemoryImages:
    """Images by digest: an honest fake of the image loader (an unknown reference is bad input)."""

    def __init__(self) -> None:
        self.images: dict[str, np.ndarray] = {}
        self.loads = 0

    def ref(self, image: np.ndarray) -> ImageRef:
        """A reference by URI to ``image``, kept here."""
        data = encode_image(image, "png")
        digest = sha256_hex(data)
        self.images[digest] = image
        return ImageRef(format="png", sha256=digest, shape=image.shape, dtype="uint8", uri=f"mem://{digest}")

    @staticmethod
    def missing(shape: tuple[int, int] = (32, 32)) -> ImageRef:
        """A reference to an image nobody has."""
        return ImageRef(format="png", sha256="f" * 64, shape=shape, dtype="uint8", uri="mem://gone")

    def __call__(self, ref: ImageRef) -> np.ndarray:
        self.loads += 1
        if ref.inline_b64 is not None:
            return decode_image(ref.inline_bytes())
        image = self.images.get(ref.sha256)
        if image is None:
            raise ImageError(f"no image {ref.sha256[:12]}", reason="image_missing")
        return image


class MemoryBlobStore:
    """The blob store's put/get over a dict (a missing blob is bad input, as on disk)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, data: bytes, sha256: str, ext: str) -> str:
        uri = f"blob://{sha256}.{ext}"
        self.blobs[uri] = data
        return uri

    def get(self, uri: str) -> bytes:
        try:
            return self.blobs[uri]
        except KeyError:
            raise InputError(f"no blob {uri}", reason="blob_missing") from None
