"""The encoder the pipeline runs: a network plus everything needed to feed it.

:class:`Encoder` owns the preprocessing (resize or resampling to the canonical
scale, channel composition, normalisation), the device placement and the
batching. Its ``model_version`` (``<arch>-<objective>-<hash of weights>``; the
hash also covers the canonical scale when the spec has one) travels with every
vector, so a consumer never compares vectors of two different models.

CUDA path: bf16 autocast, channels_last, pinned host memory, a warm-up pass.
CPU path: float32, channels_last, ``torch.inference_mode``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from shared.errors import ConfigError, ContractError
from shared.model.descriptors import DescriptorSpec, hybrid_vector
from shared.model.nets import ARCHS, ConvAutoEncoder, build_net, net_dim
from shared.model.preprocess import (
    check_input_size,
    check_scales,
    compose_channels,
    default_normalisation,
    normalise,
    parse_channels,
    resize_pairs,
)

if TYPE_CHECKING:
    from shared.model.checkpoint import CheckpointMetadata

log = logging.getLogger("lithowatch.model")

OBJECTIVES: tuple[str, ...] = (
    "untrained",
    "supervised",
    "contrastive",
    "crossview",
    "contrastive+crossview",
    "autoencoder",
)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; asking for absent CUDA is a ConfigError."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
        return torch.device(name)
    raise ConfigError(f"device must be auto, cpu or cuda[:N], not {name!r}")


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes, in name order (file-format independent)."""
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def make_model_version(
    arch: str,
    objective: str,
    state: dict[str, torch.Tensor],
    nm_per_px: float | None = None,
    descriptor: DescriptorSpec | None = None,
) -> str:
    """``<arch>-<objective>-<12 hex>``: the weights' digest, mixed with the canonical scale and
    the hybrid descriptor settings if any.

    Legacy encoders (neither) keep their version; the same weights run at two canonical
    scales, or with other descriptor weights, give different vectors, so other versions.
    """
    digest = weights_digest(state)
    if nm_per_px is not None:
        digest = hashlib.sha256(f"{digest}|nm_per_px={float(nm_per_px)!r}".encode()).hexdigest()
    if descriptor is not None:
        digest = hashlib.sha256(f"{digest}|descriptor={descriptor.model_dump_json()}".encode()).hexdigest()
    kind = objective if descriptor is None else f"{objective}+hybrid"
    return f"{arch}-{kind}-{digest[:12]}"


@dataclass(frozen=True)
class EncoderSpec:
    """Everything besides the weights that defines what a vector means."""

    arch: str
    channels: tuple[str, ...]
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    projection_dim: int = 0
    objective: str = "untrained"
    nm_per_px: float | None = None  # canonical scale of the input (nm per input px); None = legacy resize
    descriptor: DescriptorSpec | None = None  # fixed descriptors beside the learned vector (hybrid)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown architecture {self.arch!r}; choose from {', '.join(ARCHS)}")
        parse_channels(self.channels)
        check_input_size(self.input_size)
        if len(self.mean) != len(self.channels) or len(self.std) != len(self.channels):
            raise ConfigError("normalisation needs one mean and one std per channel")
        if any(not s > 0 for s in self.std):
            raise ConfigError("normalisation std must be positive")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}")
        if self.arch == "autoencoder" and self.input_size % 16:
            raise ConfigError(f"the autoencoder needs an input size divisible by 16, got {self.input_size}")
        if self.nm_per_px is not None and not (
            isinstance(self.nm_per_px, int | float)
            and not isinstance(self.nm_per_px, bool)
            and math.isfinite(self.nm_per_px)
            and self.nm_per_px > 0
        ):
            raise ConfigError(f"the canonical nm_per_px must be finite and positive, got {self.nm_per_px!r}")
        if self.descriptor is not None:
            if "mask" not in self.channels or "print" not in self.channels:
                raise ConfigError("a hybrid descriptor needs the mask and print channels")
            try:
                self.descriptor.check_input(self.input_size)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc

    @property
    def window_nm(self) -> float | None:
        """Side of the physical window the network sees, or None for a legacy encoder."""
        return None if self.nm_per_px is None else self.input_size * self.nm_per_px

    @property
    def channels_str(self) -> str:
        return ",".join(self.channels)


class Encoder:
    """A ready-to-run encoder: ``embed(masks, prints)`` -> ``(N, dim)`` unit vectors."""

    def __init__(
        self,
        net: nn.Module,
        spec: EncoderSpec,
        device: str | torch.device = "auto",
        batch_size: int = 64,
        model_version: str | None = None,
    ) -> None:
        self.spec = spec
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.net = net.eval().to(self.device).to(memory_format=torch.channels_last)
        state = {k: v for k, v in self.net.state_dict().items()}
        self.model_version = model_version or make_model_version(
            spec.arch, spec.objective, state, spec.nm_per_px, spec.descriptor
        )
        self.learned_dim = net_dim(net)
        self.dim = (
            self.learned_dim
            if spec.descriptor is None
            else sum(spec.descriptor.dims(self.learned_dim, planes=2))
        )
        self.metadata: CheckpointMetadata | None = None  # set when loaded from a checkpoint
        self.fused = False
        if self.device.type == "cuda":
            self._warm_up()

    def with_descriptor(self, descriptor: DescriptorSpec | None) -> Encoder:
        """The same network with other hybrid descriptor settings (None: the learned vector alone)."""
        if self.fused:
            raise ConfigError("set the descriptor before fusing the encoder for inference")
        spec = replace(self.spec, descriptor=descriptor)
        return Encoder(self.net, spec, device=self.device, batch_size=self.batch_size)

    def fuse_for_inference(self) -> bool:
        """Fold each BatchNorm into the convolution before it; True when done.

        Inference only: the vectors stay the same up to float rounding (3e-8 measured)
        while ResNet-50 at 224 px on one CPU thread ran 14 % faster (19.4 against 17.0
        images/s). A fused encoder is not saved (:func:`save_encoder` refuses it) nor
        trained. A network that cannot be traced symbolically is left as it is.
        """
        if self.fused or self.is_autoencoder:
            return self.fused
        from torch.fx.experimental.optimization import fuse

        try:
            fused = fuse(self.net.eval())
        except Exception as exc:  # tracing can fail in many ways: keep the original network
            log.warning("encoder %s not fused (%s): running it unfused", self.model_version, exc)
            return False
        self.net = fused.eval().to(self.device).to(memory_format=torch.channels_last)
        self.fused = True
        return True

    # -- the surface other modules rely on -------------------------------------------------
    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def channels(self) -> str:
        return self.spec.channels_str

    @property
    def arch(self) -> str:
        return self.spec.arch

    @property
    def is_autoencoder(self) -> bool:
        return isinstance(self.net, ConvAutoEncoder)

    @property
    def nm_per_px(self) -> float | None:
        """The canonical input scale (nm per input px); None for a legacy (resize-all) encoder."""
        return self.spec.nm_per_px

    def preprocess(
        self,
        masks: Sequence[np.ndarray],
        prints: Sequence[np.ndarray],
        nm_per_px: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Check, resample, stack and normalise -> ``(N, C, S, S)`` float32 on the host.

        ``nm_per_px`` (one per item) is required when the spec has a canonical scale
        (each clip is resampled to it, then centre-cropped or zero-padded) and
        ignored otherwise (each clip is resized whole). Raises
        :class:`shared.errors.ImageError` naming the first bad item.
        """
        m, p = resize_pairs(
            masks, prints, self.spec.input_size, nm_per_px, canonical_nm_per_px=self.spec.nm_per_px
        )
        x = compose_channels(torch.from_numpy(m), torch.from_numpy(p), self.spec.channels)
        x = normalise(x, self.spec.mean, self.spec.std).contiguous(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            x = x.pin_memory()
        return x

    def embed(
        self,
        masks: Sequence[np.ndarray],
        prints: Sequence[np.ndarray],
        nm_per_px: Sequence[float] | None = None,
    ) -> np.ndarray:
        """``(N, dim)`` float32, L2-normalised, in batches of ``batch_size``; see :meth:`preprocess`."""
        if len(masks) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self.embed_tensor(self.preprocess(*self._slice(masks, prints, nm_per_px, i)))
            for i in range(0, len(masks), self.batch_size)
        ]
        return np.concatenate(parts, axis=0)

    def embed_tensor(self, x: torch.Tensor) -> np.ndarray:
        """Run the network on an already preprocessed batch."""
        with torch.inference_mode(), self._autocast():
            x = x.to(self.device, non_blocking=True, memory_format=torch.channels_last)
            descriptor = self.spec.descriptor
            learned = descriptor is None or descriptor.learned_weight > 0
            z = self.net(x) if learned else x.new_zeros((x.shape[0], self.learned_dim))
            if descriptor is not None:
                planes = self._planes(x.float())
                z = hybrid_vector(z, planes[:, 0], planes, descriptor)
        z = torch.nn.functional.normalize(z.float(), dim=1)
        out = z.cpu().numpy().astype(np.float32, copy=False)
        if out.shape != (x.shape[0], self.dim) or not np.isfinite(out).all():
            raise ContractError(
                f"encoder produced invalid vectors of shape {out.shape}", reason="vector_invalid"
            )
        return out

    def reconstruction_error(
        self,
        masks: Sequence[np.ndarray],
        prints: Sequence[np.ndarray],
        nm_per_px: Sequence[float] | None = None,
    ) -> np.ndarray:
        """Per-item mean squared reconstruction error (normalised input space), autoencoders only."""
        if not isinstance(self.net, ConvAutoEncoder):
            raise ConfigError(
                f"reconstruction error needs an autoencoder checkpoint, this is {self.spec.arch}"
            )
        errors: list[np.ndarray] = []
        for i in range(0, len(masks), self.batch_size):
            x = self.preprocess(*self._slice(masks, prints, nm_per_px, i)).to(self.device)
            with torch.inference_mode(), self._autocast():
                recon = self.net.reconstruct(x)
            err = (recon.float() - x.float()).pow(2).mean(dim=(1, 2, 3))
            errors.append(err.cpu().numpy().astype(np.float32))
        return np.concatenate(errors) if errors else np.zeros((0,), dtype=np.float32)

    # -- internals ---------------------------------------------------------------------------
    def _planes(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 2, S, S)`` mask and print, unnormalised, from the network's input."""
        names = self.spec.channels
        picked = [names.index("mask"), names.index("print")]
        mean = torch.as_tensor([self.spec.mean[i] for i in picked], dtype=x.dtype, device=x.device)
        std = torch.as_tensor([self.spec.std[i] for i in picked], dtype=x.dtype, device=x.device)
        return x[:, picked] * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)

    def _slice(
        self,
        masks: Sequence[np.ndarray],
        prints: Sequence[np.ndarray],
        nm_per_px: Sequence[float] | None,
        start: int,
    ) -> tuple[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[float] | None]:
        """One batch of the inputs; a missing or mis-sized scale list is refused before slicing."""
        check_scales(nm_per_px, len(masks), self.spec.nm_per_px)
        stop = start + self.batch_size
        return masks[start:stop], prints[start:stop], None if nm_per_px is None else nm_per_px[start:stop]

    def _autocast(self) -> torch.autocast:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _warm_up(self) -> None:
        """First CUDA calls pay for cuDNN autotuning and allocation; do it before serving."""
        size = self.spec.input_size
        x = torch.zeros((min(self.batch_size, 8), len(self.spec.channels), size, size))
        self.embed_tensor(x.contiguous(memory_format=torch.channels_last))
        torch.cuda.synchronize(self.device)


def build_untrained(
    arch: str = "resnet18",
    channels: str = "mask,print",
    input_size: int = 64,
    seed: int = 0,
    projection_dim: int = 0,
    device: str = "auto",
    nm_per_px: float | None = None,
    descriptor: DescriptorSpec | None = None,
) -> Encoder:
    """The baseline: a freshly initialised network (deterministic in ``seed``).

    ``nm_per_px`` is the canonical input scale (see :class:`EncoderSpec`); None keeps
    the legacy resize-the-whole-clip preprocessing.
    """
    names = parse_channels(channels)
    mean, std = default_normalisation(names)
    spec = EncoderSpec(
        arch,
        names,
        check_input_size(input_size),
        mean,
        std,
        projection_dim,
        "untrained",
        nm_per_px,
        descriptor,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_net(arch, len(names), input_size, projection_dim)
    return Encoder(net, spec, device=device)
