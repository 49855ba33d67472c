"""Fixed layout descriptors that join the learned features in one embedding.

On real standard-cell layouts a learned network alone has lost to a 32x32 thumbnail:
what identifies a layout window across re-simulations (a window moved by a few tens
of nm, dose, focus and mask bias changed, a defect added) is mostly its coarse
geometry. Two fixed descriptors carry exactly that, and cost almost nothing:

- ``pixels``: mask and print blurred (a Gaussian of ``pixel_blur_px`` input pixels) and
  average-pooled onto a ``pixel_grid`` square grid. The blur makes a shift of a few
  pixels a small change, where a plain thumbnail sees a new image.
- ``spectral``: the magnitude of the 2-D Fourier transform of the (Hann-windowed,
  mean-removed) mask up to ``spectral_band`` cycles per window, ``log1p``-compressed.
  The magnitude does not move when the layout moves; the mask, not the print, so
  dose and focus do not move it either.

Each part is centred and scaled to unit length, multiplied by its weight and
concatenated with the unit learned vector; the whole is L2-normalised. So the cosine of
two embeddings is the weighted mean ``sum(w_i^2 cos_i) / sum(w_i^2)`` of the parts'
cosines. The descriptor settings are part of the model: recorded in its checkpoint and
in its ``model_version``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator


class DescriptorSpec(BaseModel):
    """Weights and settings of the parts of a hybrid embedding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learned_weight: float = Field(1.0, ge=0.0, le=100.0)
    pixel_weight: float = Field(1.0, ge=0.0, le=100.0)
    pixel_grid: int = Field(16, ge=2, le=64)
    pixel_blur_px: float = Field(3.0, ge=0.0, le=32.0)
    spectral_weight: float = Field(1.0, ge=0.0, le=100.0)
    spectral_band: int = Field(8, ge=1, le=64)

    @model_validator(mode="after")
    def _some_part(self) -> DescriptorSpec:
        if self.learned_weight + self.pixel_weight + self.spectral_weight <= 0:
            raise ValueError("at least one part of the embedding needs a positive weight")
        return self

    def check_input(self, input_size: int) -> None:
        """Raise ValueError when the settings do not fit an input of ``input_size`` px."""
        if self.pixel_grid > input_size:
            raise ValueError(f"pixel_grid {self.pixel_grid} exceeds the input size {input_size}")
        if 2 * self.spectral_band + 1 > input_size:
            need = 2 * self.spectral_band + 1
            raise ValueError(f"spectral_band {self.spectral_band} needs an input of at least {need} px")

    def dims(self, learned_dim: int, planes: int) -> tuple[int, int, int]:
        """Sizes of the learned, pixel and spectral parts (0 for a part with weight 0)."""
        return (
            learned_dim if self.learned_weight > 0 else 0,
            planes * self.pixel_grid**2 if self.pixel_weight > 0 else 0,
            (2 * self.spectral_band + 1) * (self.spectral_band + 1) if self.spectral_weight > 0 else 0,
        )

    def describe(self) -> str:
        parts = []
        if self.learned_weight > 0:
            parts.append(f"learned x{self.learned_weight:g}")
        if self.pixel_weight > 0:
            parts.append(f"pixels {self.pixel_grid}^2 blur {self.pixel_blur_px:g}px x{self.pixel_weight:g}")
        if self.spectral_weight > 0:
            parts.append(f"spectrum <= {self.spectral_band} x{self.spectral_weight:g}")
        return " + ".join(parts)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit length; a constant row becomes a fixed tiny-norm-safe vector."""
    x = x - x.mean(dim=1, keepdim=True)
    norms = x.norm(dim=1, keepdim=True)
    flat = norms < 1e-9
    x = torch.where(flat, torch.ones_like(x), x)
    norms = torch.where(flat, torch.full_like(norms, math.sqrt(x.shape[1])), norms)
    return x / norms


def _gaussian_blur(planes: torch.Tensor, sigma_px: float) -> torch.Tensor:
    if sigma_px <= 0:
        return planes
    radius = max(1, math.ceil(3.0 * sigma_px))
    offsets = torch.arange(-radius, radius + 1, dtype=planes.dtype, device=planes.device)
    kernel = torch.exp(-0.5 * (offsets / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    n, c, h, w = planes.shape
    x = planes.reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.reshape(n, c, h, w)


def pixel_part(planes: torch.Tensor, spec: DescriptorSpec) -> torch.Tensor:
    """``(N, C, S, S)`` planes in [0, 1] -> ``(N, C * grid^2)`` unit rows."""
    pooled = F.adaptive_avg_pool2d(_gaussian_blur(planes, spec.pixel_blur_px), spec.pixel_grid)
    return _unit_rows(pooled.flatten(1))


def spectral_part(mask: torch.Tensor, spec: DescriptorSpec) -> torch.Tensor:
    """``(N, S, S)`` masks in [0, 1] -> ``(N, (2k+1)(k+1))`` unit rows of the low-band |FFT|."""
    size = mask.shape[-1]
    hann = torch.hann_window(size, periodic=False, dtype=mask.dtype, device=mask.device)
    centred = (mask - mask.mean(dim=(1, 2), keepdim=True)) * (hann[:, None] * hann[None, :])
    magnitude = torch.fft.rfft2(centred).abs()
    k = spec.spectral_band
    band = torch.cat([magnitude[:, : k + 1, : k + 1], magnitude[:, size - k :, : k + 1]], dim=1)
    return _unit_rows(torch.log1p(band.flatten(1)))


def hybrid_vector(
    learned: torch.Tensor, mask: torch.Tensor, planes: torch.Tensor, spec: DescriptorSpec
) -> torch.Tensor:
    """Weighted concatenation of the unit learned vector and the fixed parts, L2-normalised.

    ``learned``: ``(N, D)``; ``mask``: ``(N, S, S)``; ``planes``: ``(N, C, S, S)`` (mask,
    print), all float32 with values of the unnormalised input.
    """
    parts = []
    if spec.learned_weight > 0:
        parts.append(spec.learned_weight * F.normalize(learned.float(), dim=1))
    if spec.pixel_weight > 0:
        parts.append(spec.pixel_weight * pixel_part(planes.float(), spec))
    if spec.spectral_weight > 0:
        parts.append(spec.spectral_weight * spectral_part(mask.float(), spec))
    return F.normalize(torch.cat(parts, dim=1), dim=1)
