"""The align core on generated clips with known print offsets, with in-memory images and blob store."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from memory_fakes import MemoryBlobStore, MemoryImages
from test_registration import manhattan_mask, resist_print

from services.align.core import AlignCore, FailurePolicy
from shared.contracts import AlignedResult, Hashes, UniqueResult
from shared.errors import InputError
from shared.imaging import decode_image, sha256_hex

SIZE_PX = 128
PAD_PX = 32


def window_pair(seed: int, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, print delivered offset by (dx, dy), the print in the mask's own frame)."""
    big_mask = manhattan_mask(seed, SIZE_PX + 2 * PAD_PX)
    big_print = resist_print(big_mask)
    frame = np.s_[PAD_PX : PAD_PX + SIZE_PX, PAD_PX : PAD_PX + SIZE_PX]
    moved = np.s_[PAD_PX + dy : PAD_PX + dy + SIZE_PX, PAD_PX + dx : PAD_PX + dx + SIZE_PX]
    return big_mask[frame], big_print[moved], big_print[frame]


def unique(result_id: str, images: MemoryImages, mask: np.ndarray, printed: np.ndarray) -> UniqueResult:
    return UniqueResult(
        result_id=result_id,
        job_id="job",
        clip_id=result_id,
        nm_per_px=4.0,
        mask=images.ref(mask),
        simulated=images.ref(printed),
        labels={"family": "manhattan"},
        produced_at=datetime.now(UTC),
        hashes=Hashes(exact=sha256_hex(result_id.encode())),
    )


def core(images: MemoryImages, on_failure: FailurePolicy = "flag", **kwargs: object) -> AlignCore:
    return AlignCore(images, on_failure=on_failure, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("shift", [(0, 0), (5, -3), (12, 7)])
def test_a_print_delivered_offset_is_registered_back_onto_its_mask(shift: tuple[int, int]) -> None:
    images = MemoryImages()
    mask, printed, in_frame = window_pair(1, *shift)
    item = unique("r1", images, mask, printed)
    aligned = core(images).align(item)
    assert not aligned.alignment_flagged and aligned.alignment_reason == ""
    matrix = np.asarray(aligned.transform.matrix).reshape(3, 3)
    np.testing.assert_allclose(matrix[:2, 2], shift, atol=0.25)  # print -> mask: the offset itself
    np.testing.assert_allclose(matrix[:2, :2], np.eye(2), atol=0.01)
    warped = decode_image(aligned.aligned_simulated.inline_bytes())
    inner = np.s_[16:-16, 16:-16]  # away from the borders the offset window does not cover
    assert float(np.abs(warped[inner] - in_frame[inner]).mean()) < 0.02
    # the unique result's own fields travel on
    assert aligned.result_id == "r1" and aligned.hashes == item.hashes and aligned.labels == item.labels


def test_a_print_that_does_not_fit_its_mask_is_flagged_or_rejected_by_policy() -> None:
    images = MemoryImages()
    mask, _, _ = window_pair(2, 0, 0)
    noise = (np.random.default_rng(0).random((SIZE_PX, SIZE_PX)) > 0.5).astype(np.float32)
    item = unique("noise", images, mask, noise)
    flagged = core(images, "flag").align(item)
    assert flagged.alignment_flagged and "below floor" in flagged.alignment_reason
    with pytest.raises(InputError) as refused:
        core(images, "dlq").align(item)
    assert refused.value.reason == "alignment_failed"


def test_each_item_of_a_batch_gets_its_own_outcome_in_order() -> None:
    images = MemoryImages()
    mask, printed, _ = window_pair(3, 4, 4)
    good = unique("good", images, mask, printed)
    other_shape = unique("other-shape", images, mask, printed[:64, :64])
    missing = good.model_copy(
        update={"result_id": "missing", "simulated": MemoryImages.missing((SIZE_PX, SIZE_PX))}
    )
    blank = unique("blank", images, mask, np.zeros_like(mask))
    outcomes = core(images, "dlq").process_batch([good, other_shape, missing, blank])
    assert isinstance(outcomes[0], AlignedResult) and outcomes[0].result_id == "good"
    reasons = [o.reason for o in outcomes[1:] if isinstance(o, InputError)]
    assert reasons == ["shape_mismatch", "image_missing", "alignment_failed"]


def test_the_aligned_print_goes_to_the_blob_store_over_the_inline_limit() -> None:
    images = MemoryImages()
    mask, printed, _ = window_pair(4, 2, 1)
    item = unique("r", images, mask, printed)
    store = MemoryBlobStore()
    stored = core(images, store=store, inline_limit_bytes=0).align(item).aligned_simulated
    assert stored.inline_b64 is None and stored.uri in store.blobs
    assert sha256_hex(store.get(stored.uri)) == stored.sha256
    inline = core(images, store=store, inline_limit_bytes=1 << 20).align(item).aligned_simulated
    assert inline.inline_b64 is not None and inline.uri is None and inline.sha256 == stored.sha256
