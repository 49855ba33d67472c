"""Entry point of the embed service: loads the encoder, wires the runtime.

The encoder is ``LITHOWATCH_MODEL_PATH`` (the shipped model when unset); a model switch is a
restart with another path, once novelty holds the new model's library (deploy/RUNBOOK.md,
"Model rollout"). The model version it embeds with is logged at start and exported as
``lithowatch_model_info{stage="embed"}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field

from services.embed import NAME
from services.embed.core import EmbedCore, EmbedCoreSettings
from services.embed.stage import EmbedStage
from shared import metrics
from shared.blobstore import LocalBlobStore
from shared.imageref import ImageLoader
from shared.runtime import StageRunner
from shared.settings import StageSettings, load_settings

# Measured with ResNet-50 at 224 px on one CPU thread: batch 16 ran 17.3 images/s, 32 ran 15.2,
# 4 ran 14.4; on a GPU larger batches keep the device busy.
CPU_BATCH_DEFAULT = 16
CUDA_BATCH_DEFAULT = 64

log = logging.getLogger(f"lithowatch.{NAME}")


class EmbedSettings(StageSettings):
    model_path: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # None: CPU_BATCH_DEFAULT on a CPU, CUDA_BATCH_DEFAULT on a GPU
    batch_max_messages: int | None = Field(None, ge=1, le=4096)  # type: ignore[assignment]
    batch_max_wait_ms: int = Field(100, ge=0, le=60_000)
    torch_threads: int | None = Field(None, ge=1)
    fuse_batchnorm: bool = True


def main(settings_file: str | None = None) -> int:
    settings = load_settings(EmbedSettings, settings_file)
    import torch

    from shared.model import load_encoder
    from shared.model.default import default_model_path

    model_path = settings.model_path or default_model_path()  # the shipped model unless one is set

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    encoder = load_encoder(model_path, device=settings.device)
    if settings.fuse_batchnorm:
        encoder.fuse_for_inference()
    metrics.set_info(metrics.MODEL_INFO, stage=NAME, model_version=encoder.model_version)
    log.info(
        "embedding with model %s (%d-d) from %s on %s",
        encoder.model_version,
        encoder.dim,
        model_path,
        encoder.device,
    )
    if settings.batch_max_messages is None:
        default = CUDA_BATCH_DEFAULT if encoder.device.type == "cuda" else CPU_BATCH_DEFAULT
        settings = settings.model_copy(update={"batch_max_messages": default})
    assert settings.batch_max_messages is not None
    core = EmbedCore(encoder, EmbedCoreSettings(max_batch_size=settings.batch_max_messages))
    store = LocalBlobStore(settings.blob_root)
    stage = EmbedStage(core, ImageLoader(store, settings.max_image_pixels))
    return StageRunner(stage, settings).run()
