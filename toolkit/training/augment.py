"""Augmentations that mimic what varies between farm results of one layout.

A farm re-simulates a layout with another window offset, dose, focus or bias: the
geometry stays, its placement and the printed edges move. So the augmentations
translate mask and print together (sub-pixel, zero fill, the print stays aligned)
and perturb only the print: a Gaussian blur (focus) followed by a soft
re-threshold at a random level (dose / bias moves edges in or out). Nothing flips
or rotates: a mirrored layout is a different layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_translate(
    masks: torch.Tensor, prints: torch.Tensor, max_shift_px: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift each (mask, print) pair by the same random sub-pixel offset, ``(N, S, S)`` in and out."""
    n, size = masks.shape[0], masks.shape[-1]
    if max_shift_px <= 0:
        return masks, prints
    shifts = (torch.rand((n, 2), generator=gen) * 2.0 - 1.0) * max_shift_px
    theta = torch.zeros((n, 2, 3))
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shifts * (2.0 / size)
    stacked = torch.stack([masks, prints], dim=1)
    grid = F.affine_grid(theta, list(stacked.shape), align_corners=False)
    moved = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved[:, 0], moved[:, 1]


def _gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (offsets[None, :] / sigmas[:, None].clamp_min(1e-3)) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)


def blur_each(images: torch.Tensor, sigmas_px: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (grouped convolution)."""
    n, h, w = images.shape
    radius = max(1, math.ceil(3.0 * float(sigmas_px.max())))
    k = _gaussian_kernels(sigmas_px, radius)
    x = images.reshape(1, n, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(n, 1, 1, -1), groups=n)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(n, 1, -1, 1), groups=n)
    return x.reshape(n, h, w)


def jitter_print(
    prints: torch.Tensor, gen: torch.Generator, strength: float = 1.0, probability: float = 0.5
) -> torch.Tensor:
    """For a random share of prints: blur (sigma up to 1 px at the input size), then a
    soft re-threshold at 0.5 ± 0.15; the others pass unchanged (so training also sees
    prints exactly as the farm renders them)."""
    n = prints.shape[0]
    if strength <= 0 or probability <= 0:
        return prints
    sigmas = 0.2 + torch.rand(n, generator=gen) * 0.8 * strength
    blurred = blur_each(prints, sigmas)
    thresholds = 0.5 + (torch.rand(n, generator=gen) * 2.0 - 1.0) * 0.15 * strength
    jittered = torch.sigmoid((blurred - thresholds[:, None, None]) / 0.06)
    chosen = (torch.rand(n, generator=gen) < probability)[:, None, None]
    return torch.where(chosen, jittered, prints)


def augment_pair(
    masks: torch.Tensor,
    prints: torch.Tensor,
    gen: torch.Generator,
    max_shift_px: float = 1.5,
    print_jitter: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random view of each (mask, aligned print) pair."""
    masks, prints = random_translate(masks, prints, max_shift_px, gen)
    return masks, jitter_print(prints, gen, print_jitter)
