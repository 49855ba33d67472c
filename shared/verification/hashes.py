"""Hash distances of two registered overlaps: the shift-robust spectral hash of the masks, pHash of prints.

The spectral hash (:func:`shared.hashing.spectral_hash`) of two mask overlaps
agrees within a few dozen bits for one layout. pHash of print overlaps is only
worth recording: on sparse prints (contact arrays) it moved 17-24 of 64 bits
between re-simulations whose prints agreed to the pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

from shared.hashing import hamming_distance, spectral_hash


def print_phash(binary: np.ndarray) -> int:
    """64-bit OpenCV pHash of a binarised print, as an integer."""
    digest = cv2.img_hash.pHash(binary.astype(np.uint8) * 255)
    return int.from_bytes(np.asarray(digest, dtype=np.uint8).tobytes(), "big")


def print_hash_bits(print_a: np.ndarray, print_b: np.ndarray) -> int:
    """Bits in which the pHashes of two binarised print overlaps differ."""
    return hamming_distance(print_phash(print_a), print_phash(print_b))


def mask_hash_bits(mask_a: np.ndarray, mask_b: np.ndarray) -> int:
    """Bits in which the spectral hashes of two mask overlaps (float [0, 1]) differ."""
    return hamming_distance(spectral_hash(mask_a).value, spectral_hash(mask_b).value)
