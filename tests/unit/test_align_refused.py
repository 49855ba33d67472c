"""A print whose registration is refused travels on as delivered, not moved by a rejected guess."""

from __future__ import annotations

import numpy as np
from memory_fakes import MemoryImages
from test_align_core import core, unique
from test_registration import resist_print

from shared.imaging import decode_image


def line_grating(size_px: int = 128, pitch_px: int = 16, width_px: int = 7) -> np.ndarray:
    """Vertical lines only: any shift along them, and any whole pitch across, fits equally well."""
    mask = np.zeros((size_px, size_px), dtype=np.float32)
    for x in range(0, size_px, pitch_px):
        mask[:, x : x + width_px] = 1.0
    return mask


def test_a_refused_registration_leaves_the_print_as_delivered_with_an_identity_transform() -> None:
    images = MemoryImages()
    mask = line_grating()
    printed = np.roll(resist_print(mask), 5, axis=0)  # moved along the lines: no way to tell
    aligned = core(images).align(unique("grating", images, mask, printed))
    assert aligned.alignment_flagged and aligned.alignment_reason
    assert aligned.transform.matrix == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert aligned.transform.method.endswith(":refused")
    delivered = decode_image(aligned.aligned_simulated.inline_bytes())
    assert float(np.abs(delivered - printed).max()) < 1.0 / 255 + 1e-6  # only the PNG's rounding
