"""Entry point of the embed service: loads the encoder, wires the runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from services.embed.core import EmbedCore, EmbedCoreSettings
from services.embed.stage import EmbedStage
from shared.blobstore import LocalBlobStore
from shared.errors import ConfigError
from shared.imageref import ImageLoader
from shared.runtime import StageRunner
from shared.settings import StageSettings, load_settings


class EmbedSettings(StageSettings):
    model_path: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_max_messages: int = Field(64, ge=1, le=4096)
    batch_max_wait_ms: int = Field(100, ge=0, le=60_000)
    torch_threads: int | None = Field(None, ge=1)


def main(settings_file: str | None = None) -> int:
    settings = load_settings(EmbedSettings, settings_file)
    if settings.model_path is None:
        raise ConfigError("LITHOWATCH_MODEL_PATH is not set: train an encoder first (lithowatch train)")
    import torch

    from shared.model import load_encoder

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    encoder = load_encoder(settings.model_path, device=settings.device)
    core = EmbedCore(encoder, EmbedCoreSettings(max_batch_size=settings.batch_max_messages))
    store = LocalBlobStore(settings.blob_root)
    stage = EmbedStage(core, ImageLoader(store, settings.max_image_pixels))
    return StageRunner(stage, settings).run()
