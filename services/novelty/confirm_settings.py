"""Settings of hybrid duplicate confirmation (:mod:`services.novelty.confirm`).

A module of its own so the novelty service's settings can name the defaults
without importing OpenCV (:mod:`shared.verification` is imported only when the
limits of a pixel check are asked for).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from shared.verification import DescriptorParams, PixelTolerances

CANDIDATE_POOL_DEFAULT = 20
MAX_CANDIDATES_DEFAULT = 3
PRINT_EDGE_BAND_DEFAULT = 4
MARGINAL_WIDTH_FRACTION_DEFAULT = 0.5
PROCESS_LABELS_DEFAULT = ("dose", "defocus_nm")
AcrossProcess = Literal["marginal", "mask_only"]
ACROSS_PROCESS_DEFAULT: AcrossProcess = "mask_only"


class ConfirmSettings(BaseModel):
    """Tunables of the confirmation (defaults measured with ``bench/hybrid_bench.py``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    near_identity_similarity: float = Field(0.95, ge=0.0, le=1.0)  # cosine gate on the neighbour
    # nearest entries above the gate, ranked by coarse NCC of the masks
    candidate_pool: int = Field(CANDIDATE_POOL_DEFAULT, ge=1, le=200)
    max_candidates: int = Field(MAX_CANDIDATES_DEFAULT, ge=1, le=20)  # best-ranked, checked on pixels
    coarse_scale: int = Field(4, ge=1, le=16)  # downsampling of the masks for the ranking
    max_shift_px: int = Field(56, ge=0, le=120)  # translation the registration searches
    min_overlap_fraction: float = Field(0.35, gt=0.0, le=1.0)  # of the clip area, after the shift
    mask_mismatch_max_px: int = Field(4, ge=0)  # mask pixels that may differ on the overlap
    mask_hash_radius_bits: int = Field(24, ge=0, le=256)  # spectral hash of the mask overlaps
    print_tolerance_px: int = Field(2, ge=0, le=8)  # print edges dose and focus may move
    print_mismatch_max_px: int = Field(40, ge=0)  # print pixels beyond that which may differ
    # when the masks agree: print edges another dose or focus may move (px) if the prints keep one
    # topology (nothing bridged, pinched off, vanished or appeared; shared.verification.prints);
    # 0: no topology check, only the two limits above
    print_edge_band_px: int = Field(PRINT_EDGE_BAND_DEFAULT, ge=0, le=16)
    # between results of different process conditions, a feature at the resolution limit (printed
    # half-width at most this fraction of its drawn feature's) may vanish or appear; 0: never
    marginal_width_fraction: float = Field(MARGINAL_WIDTH_FRACTION_DEFAULT, ge=0.0, le=1.0)
    # the result labels naming the process condition: marginal features are forgiven only when both
    # results carry every one of them and some differ
    process_labels: tuple[str, ...] = PROCESS_LABELS_DEFAULT
    # between results of different process conditions, on the hash path (masks pixel-exact on the
    # overlap): "mask_only" takes the agreeing masks as the layout's identity and records what the print
    # check found without refusing on it; "marginal" refuses on the print as above, so a process-window
    # hotspot (a bridge, a missing feature, a sidelobe) of a re-simulation is scored
    across_process: AcrossProcess = ACROSS_PROCESS_DEFAULT
    orb_features: int = Field(800, ge=50, le=5000)
    ratio_test: float = Field(0.8, gt=0.0, lt=1.0)
    ransac_threshold_px: float = Field(2.0, gt=0.0)
    min_inliers: int = Field(10, ge=4)
    max_scale_error: float = Field(0.02, ge=0.0)
    max_rotation_deg: float = Field(1.0, ge=0.0)
    descriptor_mask_mismatch_max_px: int = Field(8, ge=0)  # after dropping 1 px slivers
    max_panel_points: int = Field(40, ge=0, le=500)  # matched keypoints kept in the record

    @classmethod
    def from_service(cls, settings: Any) -> ConfirmSettings:
        """From the novelty service's settings: pool sizes, process conditions and, when set, the gate."""
        overrides: dict[str, Any] = {
            "candidate_pool": settings.confirm_candidate_pool,
            "max_candidates": settings.confirm_max_candidates,
            "marginal_width_fraction": settings.confirm_marginal_width_fraction,
            "process_labels": tuple(
                k.strip() for k in settings.confirm_process_labels.split(",") if k.strip()
            ),
            "across_process": settings.confirm_across_process,
        }
        if settings.near_identity_similarity is not None:
            overrides["near_identity_similarity"] = settings.near_identity_similarity
        return cls(**overrides)

    def pixel_tolerances(self, marginal_width_fraction: float) -> PixelTolerances:
        """The translation search's and print check's limits, forgiving marginal features as given."""
        from shared.verification import MAX_SHIFT_PX, PixelTolerances

        return PixelTolerances(
            max_shift_px=min(self.max_shift_px, MAX_SHIFT_PX),
            mask_mismatch_max_px=self.mask_mismatch_max_px,
            print_tolerance_px=self.print_tolerance_px,
            print_mismatch_max_px=self.print_mismatch_max_px,
            print_edge_band_px=self.print_edge_band_px,
            marginal_width_fraction=marginal_width_fraction,
        )

    def descriptor_params(self) -> DescriptorParams:
        """The keypoint registration's limits."""
        from shared.verification import DescriptorParams

        return DescriptorParams(
            orb_features=self.orb_features,
            ratio_test=self.ratio_test,
            ransac_threshold_px=self.ransac_threshold_px,
            min_inliers=self.min_inliers,
            max_scale_error=self.max_scale_error,
            max_rotation_deg=self.max_rotation_deg,
            min_overlap_fraction=self.min_overlap_fraction,
            mask_mismatch_max_px=self.descriptor_mask_mismatch_max_px,
            max_points=self.max_panel_points,
        )
