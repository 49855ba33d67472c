"""Network architectures of the encoder, all built from scratch (no downloaded weights).

Every network maps a ``(N, C, H, W)`` float tensor (the stacked mask, aligned print
and optionally their difference) to an ``(N, dim)`` L2-normalised embedding.

- ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision ResNets with the first
  convolution taking ``C`` channels, global average pooling and an optional
  projection head (Linear-ReLU-Linear). ResNet-50 gives 2048-d vectors.
- ``resnet18-w32`` / ``resnet18-w16``: ResNet-18 with every stage 2x / 4x narrower
  (the BasicBlock layout unchanged), for CPU-only deployments.
- ``autoencoder``: a small convolutional auto-encoder; the embedding is the
  bottleneck, and the reconstruction error is a novelty score of its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.models.resnet import BasicBlock, ResNet

RESNET_ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet18-w32", "resnet18-w16")
ARCHS: tuple[str, ...] = (*RESNET_ARCHS, "autoencoder")

_TORCHVISION: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
}
_NARROW_BASE_WIDTH: dict[str, int] = {"resnet18-w32": 32, "resnet18-w16": 16}


class NarrowResNet18(nn.Module):
    """ResNet-18 with stage widths ``w, 2w, 4w, 8w`` instead of ``64 ... 512``."""

    def __init__(self, in_channels: int, base_width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = base_width
        self.layer1 = self._make_layer(base_width, stride=1)
        self.layer2 = self._make_layer(base_width * 2, stride=2)
        self.layer3 = self._make_layer(base_width * 4, stride=2)
        self.layer4 = self._make_layer(base_width * 8, stride=2)
        self.out_features = base_width * 8
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        downsample: nn.Module | None = None
        if stride != 1 or self._inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        blocks = [BasicBlock(self._inplanes, planes, stride, downsample), BasicBlock(planes, planes)]
        self._inplanes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class TorchvisionTrunk(nn.Module):
    """A torchvision ResNet without its classifier, first convolution taking ``C`` channels."""

    def __init__(self, arch: str, in_channels: int) -> None:
        super().__init__()
        net = _TORCHVISION[arch](weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.out_features = int(net.fc.in_features)
        net.fc = nn.Identity()  # drop the ImageNet classifier
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class ResNetEmbedder(nn.Module):
    """Trunk + global pooling + optional projection head, L2-normalised output."""

    def __init__(self, arch: str, in_channels: int, projection_dim: int = 0) -> None:
        super().__init__()
        self.trunk: TorchvisionTrunk | NarrowResNet18
        if arch in _TORCHVISION:
            self.trunk = TorchvisionTrunk(arch, in_channels)
        elif arch in _NARROW_BASE_WIDTH:
            self.trunk = NarrowResNet18(in_channels, _NARROW_BASE_WIDTH[arch])
        else:
            raise ValueError(f"unknown ResNet architecture {arch!r}")
        self.feature_dim = self.trunk.out_features
        self.head: nn.Module | None = None
        self.dim = self.feature_dim
        if projection_dim > 0:
            self.head = nn.Sequential(
                nn.Linear(self.feature_dim, self.feature_dim),
                nn.ReLU(inplace=True),
                nn.Linear(self.feature_dim, projection_dim),
            )
            self.dim = projection_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features before the head (not normalised); training heads use them."""
        out: torch.Tensor = self.trunk(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        if self.head is not None:
            z = self.head(z)
        return F.normalize(z.float(), dim=1)


class ConvAutoEncoder(nn.Module):
    """Stride-2 conv encoder to a ``bottleneck_dim`` vector, mirrored decoder.

    Works for any input size divisible by 16. The decoder's output is compared
    with the (unnormalised, ``[0, 1]`` or ``[-1, 1]`` for the difference) input.
    """

    def __init__(self, in_channels: int, input_size: int, bottleneck_dim: int = 128) -> None:
        super().__init__()
        if input_size % 16 != 0:
            raise ValueError(f"autoencoder input size must be a multiple of 16, got {input_size}")
        widths = (32, 64, 96, 128)
        layers: list[nn.Module] = []
        prev = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(prev, width, 3, stride=2, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            prev = width
        self.encoder = nn.Sequential(*layers)
        self._grid = input_size // 16
        flat = widths[-1] * self._grid * self._grid
        self.to_code = nn.Linear(flat, bottleneck_dim)
        self.from_code = nn.Linear(bottleneck_dim, flat)
        dec: list[nn.Module] = []
        rev = (*widths[::-1][1:], 32)
        prev = widths[-1]
        for width in rev:
            dec += [
                nn.ConvTranspose2d(prev, width, 4, stride=2, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            prev = width
        dec.append(nn.Conv2d(prev, in_channels, 3, padding=1))
        self.decoder = nn.Sequential(*dec)
        self.dim = bottleneck_dim
        self.feature_dim = bottleneck_dim
        self._widths = widths

    def code(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.to_code(torch.flatten(self.encoder(x), 1))
        return out

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        h = self.from_code(code).view(-1, self._widths[-1], self._grid, self._grid)
        out: torch.Tensor = self.decoder(h)
        return out

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.code(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.code(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.code(x).float(), dim=1)


def build_net(arch: str, in_channels: int, input_size: int, projection_dim: int = 0) -> nn.Module:
    """Build one of :data:`ARCHS`; weights are freshly initialised by the global torch RNG."""
    if arch in RESNET_ARCHS:
        return ResNetEmbedder(arch, in_channels, projection_dim)
    if arch == "autoencoder":
        return ConvAutoEncoder(in_channels, input_size, bottleneck_dim=projection_dim or 128)
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


def net_dim(net: nn.Module) -> int:
    dim = getattr(net, "dim", None)
    if not isinstance(dim, int):
        raise TypeError("network has no integer 'dim'")
    return dim
