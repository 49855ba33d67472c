"""From (mask, aligned print) image pairs to the encoder's input tensor.

Images are 2-D float32 arrays in ``[0, 1]`` (see :mod:`shared.imaging`), the print
already registered to the mask's frame. Both are resized to the encoder's square
input size; the channels are picked by name:

- ``mask``: the mask clip (1 = feature);
- ``print``: the aligned simulated print (1 = printed);
- ``diff``: ``print - mask`` in ``[-1, 1]``: where the print departs from the mask.

The normalisation (per-channel mean and standard deviation) is part of a checkpoint.
"""

from __future__ import annotations

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


def resize_pairs(
    masks: Sequence[np.ndarray], prints: Sequence[np.ndarray], size_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """Checked and resized ``(N, S, S)`` float32 stacks of masks and prints."""
    if len(masks) != len(prints):
        raise ImageError(f"{len(masks)} masks but {len(prints)} prints", reason="image_count")
    out_m = np.empty((len(masks), size_px, size_px), dtype=np.float32)
    out_p = np.empty_like(out_m)
    for i, (mask, print_image) in enumerate(zip(masks, prints, strict=True)):
        try:
            check_pair(mask, print_image)
        except ImageError as exc:
            raise ImageError(f"item {i}: {exc}", reason=exc.reason) from exc
        out_m[i] = resize_square(mask, size_px)
        out_p[i] = resize_square(print_image, size_px)
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
