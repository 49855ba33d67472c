"""Entry point of the align service: wires settings, blob store and the runtime."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.align.core import AlignCore
from services.align.stage import AlignStage
from shared.blobstore import LocalBlobStore
from shared.imageref import ImageLoader
from shared.registration import AlignSettings
from shared.runtime import StageRunner
from shared.settings import StageSettings, load_settings


class AlignServiceSettings(StageSettings):
    align_quality_floor: float = Field(0.9, ge=0.0, le=1.0)
    align_max_shift_px: int = Field(32, ge=0)
    align_fallback: Literal["orb", "akaze", "sift", "none"] = "sift"
    align_on_failure: Literal["flag", "dlq"] = "flag"
    align_use_ecc: bool = True
    align_ecc_max_iterations: int = Field(30, ge=1, le=1000)

    def registration(self) -> AlignSettings:
        """The core's registration settings, built from these once."""
        return AlignSettings(
            quality_floor=self.align_quality_floor,
            use_ecc=self.align_use_ecc,
            ecc_max_iterations=self.align_ecc_max_iterations,
            max_shift_px=self.align_max_shift_px,
            fallback=self.align_fallback,
        )


def main(settings_file: str | None = None) -> int:
    settings = load_settings(AlignServiceSettings, settings_file)
    store = LocalBlobStore(settings.blob_root)
    core = AlignCore(
        ImageLoader(store, settings.max_image_pixels),
        settings.registration(),
        settings.align_on_failure,
        store,
        settings.inline_image_limit_bytes,
    )
    return StageRunner(AlignStage(core), settings).run()
