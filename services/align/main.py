"""Entry point of the align service: wires settings, blob store and the runtime."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.align.core import AlignCore
from services.align.stage import AlignStage
from shared.blobstore import LocalBlobStore
from shared.imageref import ImageLoader
from shared.registration import AlignSettings
from shared.registration.model import EccMotion, PrintModel
from shared.runtime import StageRunner
from shared.settings import StageSettings, load_settings


class AlignServiceSettings(StageSettings):
    """The align service's settings: ``LITHOWATCH_ALIGN_<FIELD>`` for each field of
    :class:`AlignSettings` a deployment may need to change (defaults are the same; see
    ``docs/configuration.md`` and ``docs/alignment.md``), and what to do with a refusal.

    ``align_optics_sigma_px`` and ``align_blur_sigma_px`` are in pixels of the delivered
    images: at a pixel size other than 4 nm they scale with it."""

    align_quality_floor: float = Field(0.9, ge=0.0, le=1.0)
    align_max_shift_px: int = Field(32, ge=0)
    align_fallback: Literal["orb", "akaze", "sift", "none"] = "sift"
    align_on_failure: Literal["flag", "dlq"] = "flag"
    align_use_ecc: bool = True
    align_ecc_max_iterations: int = Field(30, ge=1, le=1000)
    align_ecc_motion: EccMotion = "similarity"
    align_optics_sigma_px: float = Field(7.0, gt=0.0, le=64.0)
    align_print_model: PrintModel = "projection"
    align_blur_sigma_px: float = Field(4.0, ge=0.5, le=64.0)
    align_ambiguity_ratio: float = Field(0.97, gt=0.0, le=1.0)
    align_max_rotation_deg: float = Field(10.0, gt=0.0, le=90.0)
    align_max_scale_change: float = Field(0.1, gt=0.0, lt=1.0)
    align_whole_overlap: bool = True
    align_whole_overlap_floor: float = Field(0.95, ge=0.0, le=1.0)
    align_refuse_unpinned_rotation: bool = True
    align_ignore_repeats_beyond_range: bool = True
    align_whole_overlap_similarity: bool = True
    align_polish_huber_k: float = Field(3.0, ge=0.0, le=100.0)
    # an ambiguous peak is answered when refinement fits one repeat this share of the others' misfit or
    # better (periodic gates); 0: refused
    align_repeat_misfit_ratio: float = Field(0.05, ge=0.0, le=1.0)
    # where the centre the first pass compares holds under this share of the approximate print's contrast
    # (the pattern lies along the clip's edges), the keypoints and the second look answer; 0: off
    align_min_centre_contrast: float = Field(0.05, ge=0.0, le=1.0)
    # the second look refuses where the mask matches itself one repeat away within the search range
    align_refuse_mask_repeats: bool = True

    def registration(self) -> AlignSettings:
        """The core's registration settings, built from these once."""
        return AlignSettings(
            quality_floor=self.align_quality_floor,
            use_ecc=self.align_use_ecc,
            ecc_max_iterations=self.align_ecc_max_iterations,
            ecc_motion=self.align_ecc_motion,
            max_shift_px=self.align_max_shift_px,
            fallback=self.align_fallback,
            optics_sigma_px=self.align_optics_sigma_px,
            print_model=self.align_print_model,
            blur_sigma_px=self.align_blur_sigma_px,
            ambiguity_ratio=self.align_ambiguity_ratio,
            max_rotation_deg=self.align_max_rotation_deg,
            max_scale_change=self.align_max_scale_change,
            whole_overlap=self.align_whole_overlap,
            whole_overlap_floor=self.align_whole_overlap_floor,
            refuse_unpinned_rotation=self.align_refuse_unpinned_rotation,
            ignore_repeats_beyond_range=self.align_ignore_repeats_beyond_range,
            whole_overlap_similarity=self.align_whole_overlap_similarity,
            polish_huber_k=self.align_polish_huber_k,
            repeat_misfit_ratio=self.align_repeat_misfit_ratio,
            min_centre_contrast=self.align_min_centre_contrast,
            refuse_mask_repeats=self.align_refuse_mask_repeats,
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
