"""From (mask, aligned print) image pairs to the encoder's input tensor.

Images are 2-D float32 arrays in ``[0, 1]`` (see :mod:`shared.imaging`), the print
already registered to the mask's frame. How a clip becomes the encoder's square
input depends on the encoder's canonical scale:

- none (legacy checkpoints): the whole clip is resized to the input size, whatever
  its physical size, so clips of different ``nm_per_px`` are seen at different scales;
- ``canonical_nm_per_px``: the clip is resampled from its own ``nm_per_px`` to the
  canonical scale, then centre-cropped or zero-padded to the input size, so the
  network always sees a window of ``input_size * canonical_nm_per_px`` nm
  (:func:`rescale_clip`).

The channels are picked by name:

- ``mask``: the mask clip (1 = feature);
- ``print``: the aligned simulated print (1 = printed);
- ``diff``: ``print - mask`` in ``[-1, 1]``: where the print departs from the mask.

The normalisation (per-channel mean and standard deviation) is part of a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from shared.errors import ConfigError, ImageError

CHANNEL_NAMES: tuple[str, ...] = ("mask", "print", "diff")
CHANNEL_SETS: tuple[str, ...] = ("mask,print", "mask,print,diff")
DEFAULT_MEAN: dict[str, float] = {"mask": 0.5, "print": 0.5, "diff": 0.0}
DEFAULT_STD: dict[str, float] = {"mask": 0.5, "print": 0.5, "diff": 0.5}
MIN_INPUT_PX = 16
MAX_INPUT_PX = 1024
MAX_SCALE_FACTOR = 16.0  # resampling by more than this either way is refused
MIN_WINDOW_FRACTION = 0.5  # a clip must span at least this share of the model's window per side


def parse_channels(channels: str | Sequence[str]) -> tuple[str, ...]:
    """``"mask,print"`` or ``("mask", "print")`` -> validated tuple of channel names."""
    names = tuple(c.strip() for c in channels.split(",")) if isinstance(channels, str) else tuple(channels)
    if ",".join(names) not in CHANNEL_SETS:
        raise ConfigError(f"channels must be one of {' | '.join(CHANNEL_SETS)}, not {','.join(names)!r}")
    return names


def check_input_size(input_size_px: int) -> int:
    if not isinstance(input_size_px, int) or not MIN_INPUT_PX <= input_size_px <= MAX_INPUT_PX:
        raise ConfigError(
            f"input size must be an integer in [{MIN_INPUT_PX}, {MAX_INPUT_PX}] px, got {input_size_px!r}"
        )
    return input_size_px


def _checked(image: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{what} is not a numpy array", reason="image_dtype")
    if image.ndim != 2 or image.shape[0] < 2 or image.shape[1] < 2:
        raise ImageError(f"{what} must be a 2-D image, got shape {image.shape}", reason="image_rank")
    if image.dtype != np.float32:
        raise ImageError(f"{what} must be float32 in [0, 1], got {image.dtype}", reason="image_dtype")
    if not np.isfinite(image).all():
        raise ImageError(f"{what} contains NaN or infinity", reason="image_nonfinite")
    return image


def check_pair(mask: np.ndarray, print_image: np.ndarray) -> None:
    """Raise :class:`ImageError` unless both are float32 2-D images of one shape."""
    _checked(mask, "mask")
    _checked(print_image, "print")
    if mask.shape != print_image.shape:
        raise ImageError(
            f"mask {mask.shape} and aligned print {print_image.shape} differ in shape", reason="image_shape"
        )


def resize_square(image: np.ndarray, size_px: int) -> np.ndarray:
    """Area-average down (anti-aliased), bilinear up; always ``(size_px, size_px)`` float32."""
    if image.shape == (size_px, size_px):
        return np.ascontiguousarray(image, dtype=np.float32)
    shrinking = image.shape[0] >= size_px and image.shape[1] >= size_px
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = cv2.resize(
        np.ascontiguousarray(image, dtype=np.float32), (size_px, size_px), interpolation=interpolation
    )
    return np.clip(out, 0.0, 1.0)


def check_nm_per_px(nm_per_px: float | None, what: str = "clip") -> float:
    """A finite, positive scale as float; else :class:`ImageError` (``image_scale``)."""
    value = math.nan
    if isinstance(nm_per_px, int | float | np.integer | np.floating) and not isinstance(nm_per_px, bool):
        value = float(nm_per_px)
    if not (math.isfinite(value) and value > 0):
        raise ImageError(
            f"{what} needs a finite, positive nm_per_px, got {nm_per_px!r}", reason="image_scale"
        )
    return value


def check_scales(nm_per_px: Sequence[float] | None, count: int, canonical_nm_per_px: float | None) -> None:
    """One scale per clip when given; required when the model has a canonical scale."""
    if canonical_nm_per_px is not None and nm_per_px is None:
        raise ImageError(
            f"the model works at {canonical_nm_per_px:g} nm/px and needs each clip's nm_per_px",
            reason="image_scale",
        )
    if nm_per_px is not None and len(nm_per_px) != count:
        raise ImageError(f"{count} clips but {len(nm_per_px)} nm_per_px values", reason="image_count")


def scaled_shape(
    shape: tuple[int, ...], nm_per_px: float | None, canonical_nm_per_px: float, size_px: int
) -> tuple[int, int]:
    """The clip's ``(height, width)`` at the canonical scale, after checking it can be embedded.

    Raises :class:`ImageError` (``image_scale``) for a bad ``nm_per_px``, a resampling
    factor outside ``[1/16, 16]``, or a clip spanning less than half of the model's
    window (``size_px * canonical_nm_per_px`` nm) along a side.
    """
    scale = check_nm_per_px(nm_per_px)
    canonical = check_nm_per_px(canonical_nm_per_px, "the model's canonical scale")
    factor = scale / canonical
    if not 1.0 / MAX_SCALE_FACTOR <= factor <= MAX_SCALE_FACTOR:
        raise ImageError(
            f"clip at {scale:g} nm/px needs resampling by {factor:.4g} to the model's {canonical:g} nm/px; "
            f"only factors in [1/{MAX_SCALE_FACTOR:g}, {MAX_SCALE_FACTOR:g}] are allowed",
            reason="image_scale",
        )
    height, width = int(shape[0]), int(shape[1])
    window_nm = size_px * canonical
    extent_nm = min(height, width) * scale
    if extent_nm < MIN_WINDOW_FRACTION * window_nm:
        raise ImageError(
            f"clip of {height}x{width} px at {scale:g} nm/px spans {height * scale:g}x{width * scale:g} nm, "
            f"under half of the model's {window_nm:g} nm window ({size_px} px at {canonical:g} nm/px)",
            reason="image_scale",
        )
    return max(1, round(height * factor)), max(1, round(width * factor))


def _centre_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centred ``height x width`` window of ``image`` (no larger than it); same parity keeps it exact."""
    top = (image.shape[0] - height) // 2
    left = (image.shape[1] - width) // 2
    return image[top : top + height, left : left + width]


def _fit(image: np.ndarray, size_px: int) -> np.ndarray:
    """Centre-crop or zero-pad each axis to ``size_px``; always a fresh contiguous array."""
    out = np.zeros((size_px, size_px), dtype=np.float32)
    height, width = image.shape
    src = _centre_crop(image, min(height, size_px), min(width, size_px))
    top = (size_px - src.shape[0]) // 2
    left = (size_px - src.shape[1]) // 2
    out[top : top + src.shape[0], left : left + src.shape[1]] = src
    return out


def rescale_clip(image: np.ndarray, nm_per_px: float, canonical_nm_per_px: float, size_px: int) -> np.ndarray:
    """One image from its ``nm_per_px`` to the canonical scale, centred in ``size_px`` x ``size_px``.

    Area-average when shrinking (anti-aliased), bilinear when enlarging, values
    clipped to ``[0, 1]``; then centre-cropped or zero-padded (0 = no feature, not
    printed), so the result covers ``size_px * canonical_nm_per_px`` nm per side.
    When enlarging, only the part of the clip that can reach the window (plus a
    margin for the interpolation) is resampled, so a large clip does not blow up
    in memory. Raises :class:`ImageError` as :func:`scaled_shape` does.
    """
    image = _checked(image, "clip")
    height, width = scaled_shape(image.shape, nm_per_px, canonical_nm_per_px, size_px)
    factor = float(nm_per_px) / float(canonical_nm_per_px)
    src = np.ascontiguousarray(image, dtype=np.float32)
    if (height, width) == src.shape:
        return _fit(src, size_px)
    if factor > 1.0 and max(height, width) > size_px + 2 * math.ceil(factor):
        # Keep a centred source window of the same parity as the clip (its centre stays put).
        need = math.ceil(size_px / factor) + 4
        keep_h = min(src.shape[0], need + (src.shape[0] - need) % 2)
        keep_w = min(src.shape[1], need + (src.shape[1] - need) % 2)
        src = np.ascontiguousarray(_centre_crop(src, keep_h, keep_w))
        height, width = max(1, round(keep_h * factor)), max(1, round(keep_w * factor))
    interpolation = cv2.INTER_AREA if factor < 1.0 else cv2.INTER_LINEAR
    resampled = cv2.resize(src, (width, height), interpolation=interpolation)
    return _fit(np.clip(resampled, 0.0, 1.0), size_px)


def resize_pairs(
    masks: Sequence[np.ndarray],
    prints: Sequence[np.ndarray],
    size_px: int,
    nm_per_px: Sequence[float] | None = None,
    *,
    canonical_nm_per_px: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``(N, S, S)`` float32 stacks of masks and prints at the model's input.

    Without ``canonical_nm_per_px`` (legacy) each clip is resized whole to ``S x S``
    and ``nm_per_px`` is not used. With it, ``nm_per_px`` (one per item) is required
    and each clip goes through :func:`rescale_clip`. Errors name the first bad item.
    """
    if len(masks) != len(prints):
        raise ImageError(f"{len(masks)} masks but {len(prints)} prints", reason="image_count")
    check_scales(nm_per_px, len(masks), canonical_nm_per_px)
    scales = list(nm_per_px) if nm_per_px is not None else []
    out_m = np.empty((len(masks), size_px, size_px), dtype=np.float32)
    out_p = np.empty_like(out_m)
    for i, (mask, print_image) in enumerate(zip(masks, prints, strict=True)):
        try:
            check_pair(mask, print_image)
            if canonical_nm_per_px is None:
                out_m[i] = resize_square(mask, size_px)
                out_p[i] = resize_square(print_image, size_px)
            else:
                out_m[i] = rescale_clip(mask, scales[i], canonical_nm_per_px, size_px)
                out_p[i] = rescale_clip(print_image, scales[i], canonical_nm_per_px, size_px)
        except ImageError as exc:
            raise ImageError(f"item {i}: {exc}", reason=exc.reason) from exc
    return out_m, out_p


def compose_channels(masks: torch.Tensor, prints: torch.Tensor, channels: Sequence[str]) -> torch.Tensor:
    """``(N, S, S)`` masks and prints -> ``(N, C, S, S)`` unnormalised input."""
    planes = {"mask": masks, "print": prints}
    stack = [planes[name] if name != "diff" else prints - masks for name in channels]
    return torch.stack(stack, dim=1)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def default_normalisation(channels: Sequence[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(DEFAULT_MEAN[c] for c in channels), tuple(DEFAULT_STD[c] for c in channels)
