"""Entry point of the align service: wires settings, blob store and the runtime."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.align.core import AlignCore
from shared.blobstore import LocalBlobStore
from shared.imageref import ImageLoader
from shared.registration import AlignSettings
from shared.runtime import StageRunner
from shared.settings import StageSettings, load_settings


class AlignServiceSettings(StageSettings):
    align_quality_floor: float = Field(0.9, ge=0.0, le=1.0)
    align_max_shift_px: int = Field(32, ge=0)
    align_fallback: Literal["orb", "akaze", "none"] = "akaze"
    align_on_failure: Literal["flag", "dlq"] = "flag"
    align_use_ecc: bool = True
    align_ecc_max_iterations: int = Field(30, ge=1, le=1000)


def main(settings_file: str | None = None) -> int:
    settings = load_settings(AlignServiceSettings, settings_file)
    store = LocalBlobStore(settings.blob_root)
    align_settings = AlignSettings(
        quality_floor=settings.align_quality_floor,
        use_ecc=settings.align_use_ecc,
        ecc_max_iterations=settings.align_ecc_max_iterations,
        max_shift_px=settings.align_max_shift_px,
        fallback=settings.align_fallback,
    )
    core = AlignCore(
        ImageLoader(store, settings.max_image_pixels),
        align_settings,
        settings.align_on_failure,
        store,
        settings.inline_image_limit_bytes,
    )
    return StageRunner(core, settings).run()
