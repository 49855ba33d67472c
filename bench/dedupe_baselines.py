"""Hash-family baselines for the dedupe benchmark, each deciding a stream the way the service would.

Every method sees the stream in order and calls a result a duplicate of the
earliest-kept unique result it accepts, else keeps it (no pixel check after):

- ``BlockMeanHash`` (OpenCV ``img_hash``, 256 bits) of the mask: nearest kept within a Hamming radius;
- ``RadialVarianceHash`` (OpenCV ``img_hash``) of the mask: best kept whose cross-correlation
  peak (``compare``, higher is closer) reaches a threshold;
- keypoint pre-alignment then pHash: ORB or SIFT keypoints, RANSAC homography of the result
  onto a kept clip, the result warped into that clip's frame, pHash of both over the warped
  support; a duplicate within a radius;
- descriptor matching: ORB or AKAZE descriptors, ratio test, RANSAC similarity; a duplicate
  when enough inliers agree on a near-pure translation.

The pairwise methods register a result against the ``shortlist`` kept clips nearest by
``BlockMeanHash`` (all kept clips would cost O(n^2) registrations).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Verdicts = dict[str, str | None]


@dataclass(frozen=True)
class Clip:
    result_id: str
    mask_u8: np.ndarray


def _bits(digest: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.asarray(digest, dtype=np.uint8).ravel())


def block_mean_bits(mask: np.ndarray) -> np.ndarray:
    return _bits(cv2.img_hash.blockMeanHash(mask, mode=cv2.img_hash.BLOCK_MEAN_HASH_MODE_0))


def run_block_mean(clips: Sequence[Clip], radius: int) -> Verdicts:
    kept_ids: list[str] = []
    kept: list[np.ndarray] = []
    out: Verdicts = {}
    for clip in clips:
        bits = block_mean_bits(clip.mask_u8)
        if kept:
            d = np.count_nonzero(np.asarray(kept) != bits[None], axis=1)
            j = int(d.argmin())
            if d[j] <= radius:
                out[clip.result_id] = kept_ids[j]
                continue
        out[clip.result_id] = None
        kept_ids.append(clip.result_id)
        kept.append(bits)
    return out


def run_radial_variance(clips: Sequence[Clip], threshold: float) -> Verdicts:
    hasher = cv2.img_hash.RadialVarianceHash.create()
    kept_ids: list[str] = []
    kept: list[np.ndarray] = []
    out: Verdicts = {}
    for clip in clips:
        digest = hasher.compute(clip.mask_u8)
        best, best_id = -1.0, None
        for rid, other in zip(kept_ids, kept, strict=True):
            score = float(hasher.compare(digest, other))
            if score > best:
                best, best_id = score, rid
        if best_id is not None and best >= threshold:
            out[clip.result_id] = best_id
            continue
        out[clip.result_id] = None
        kept_ids.append(clip.result_id)
        kept.append(digest)
    return out


def _phash_bits(image: np.ndarray) -> np.ndarray:
    return _bits(cv2.img_hash.pHash(image))


def _detector(kind: str) -> tuple[object, int]:
    if kind == "orb":
        return cv2.ORB.create(
            nfeatures=500, fastThreshold=10, edgeThreshold=15, patchSize=15
        ), cv2.NORM_HAMMING
    if kind == "sift":
        return cv2.SIFT.create(nfeatures=500), cv2.NORM_L2
    return cv2.xfeatures2d.AKAZE.create(), cv2.NORM_HAMMING


class PairwiseBaseline:
    """Keypoint pre-alignment + pHash (``mode="align"``) or descriptor matching (``mode="match"``)."""

    def __init__(
        self,
        kind: str,
        mode: str,
        *,
        shortlist: int = 5,
        phash_radius: int = 10,
        min_inliers: int = 8,
        ratio: float = 0.8,
    ) -> None:
        self.detector, self.norm = _detector(kind)
        self.mode = mode
        self.shortlist = shortlist
        self.phash_radius = phash_radius
        self.min_inliers = min_inliers
        self.ratio = ratio

    def features(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        keypoints, descriptors = self.detector.detectAndCompute(mask, None)  # type: ignore[attr-defined]
        points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
        return points, descriptors

    def _matches(
        self, a: tuple[np.ndarray, np.ndarray | None], b: tuple[np.ndarray, np.ndarray | None]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        if a[1] is None or b[1] is None or len(a[0]) < 4 or len(b[0]) < 4:
            return None
        pairs = cv2.BFMatcher(self.norm).knnMatch(b[1], a[1], k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.ratio * p[1].distance]
        if len(good) < self.min_inliers:
            return None
        src = np.array([b[0][m.queryIdx] for m in good], dtype=np.float32)
        dst = np.array([a[0][m.trainIdx] for m in good], dtype=np.float32)
        return src, dst

    def same(
        self,
        mask_a: np.ndarray,
        feat_a: tuple[np.ndarray, np.ndarray | None],
        mask_b: np.ndarray,
        feat_b: tuple[np.ndarray, np.ndarray | None],
    ) -> bool:
        matched = self._matches(feat_a, feat_b)
        if matched is None:
            return False
        src, dst = matched
        if self.mode == "match":
            matrix, inliers = cv2.estimateAffinePartial2D(
                src, dst, method=cv2.RANSAC, ransacReprojThreshold=2.0
            )
            if matrix is None or inliers is None or int(inliers.sum()) < self.min_inliers:
                return False
            scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
            return abs(scale - 1.0) < 0.02 and abs(float(matrix[1, 0])) < 0.02
        homography, inliers = cv2.findHomography(src, dst, cv2.RANSAC, 3.0)
        if homography is None or inliers is None or int(inliers.sum()) < self.min_inliers:
            return False
        h, w = mask_a.shape
        warped = cv2.warpPerspective(mask_b, homography, (w, h), flags=cv2.INTER_NEAREST)
        support = cv2.warpPerspective(np.full_like(mask_b, 255), homography, (w, h), flags=cv2.INTER_NEAREST)
        reference = np.where(support > 0, mask_a, 0).astype(np.uint8)
        distance = int(np.count_nonzero(_phash_bits(reference) != _phash_bits(warped)))
        return distance <= self.phash_radius

    def run(self, clips: Sequence[Clip]) -> Verdicts:
        kept: list[tuple[str, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray | None]]] = []
        out: Verdicts = {}
        for clip in clips:
            bits = block_mean_bits(clip.mask_u8)
            feat = self.features(clip.mask_u8)
            found = None
            if kept:
                d = np.count_nonzero(np.asarray([k[2] for k in kept]) != bits[None], axis=1)
                for j in np.argsort(d, kind="stable")[: self.shortlist]:
                    rid, mask, _, kfeat = kept[int(j)]
                    if self.same(mask, kfeat, clip.mask_u8, feat):
                        found = rid
                        break
            out[clip.result_id] = found
            if found is None:
                kept.append((clip.result_id, clip.mask_u8, bits, feat))
        return out


def baselines() -> list[tuple[str, Callable[[Sequence[Clip]], Verdicts]]]:
    """(name, run) of every baseline, in the order the table prints them."""
    return [
        ("BlockMeanHash (mask), <= 16 of 256", lambda c: run_block_mean(c, 16)),
        ("RadialVarianceHash (mask), peak >= 0.9", lambda c: run_radial_variance(c, 0.9)),
        ("ORB homography + pHash, <= 10", PairwiseBaseline("orb", "align").run),
        ("SIFT homography + pHash, <= 10", PairwiseBaseline("sift", "align").run),
        ("ORB descriptor matching", PairwiseBaseline("orb", "match").run),
        ("AKAZE descriptor matching", PairwiseBaseline("akaze", "match").run),
    ]


def timed(run: Callable[[Sequence[Clip]], Verdicts], clips: Sequence[Clip]) -> tuple[Verdicts, float]:
    start = time.perf_counter()
    verdicts = run(clips)
    return verdicts, time.perf_counter() - start
