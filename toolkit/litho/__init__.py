"""Lithography farm emulator: layouts, partially coherent optics, resist, defects, farm.

Units are nm; images are float32 ``(size, size)`` in [0, 1], row index = y,
column index = x. Mask value 1 is an opening (dark-field tone: trenches,
contacts, vias); the print is 1 where the resist develops a feature.
"""

from __future__ import annotations

from toolkit.litho.defects import (
    DEFECT_FAMILIES,
    DEFECT_TYPES,
    DefectInjection,
    NoDefectSite,
    applicable_defects,
    inject_defect,
)
from toolkit.litho.families import FAMILIES, generate_layout
from toolkit.litho.farm import ClipSample, FarmGenerator, Variant, defect_severity
from toolkit.litho.geometry import Layout, bias_rects, manhattan_polygon_to_rects, rasterize
from toolkit.litho.optics import OpticsSettings, SocsKernels, abbe_aerial, compute_socs_kernels
from toolkit.litho.simulator import LithoSimulator, ResistSettings

__all__ = [
    "DEFECT_FAMILIES",
    "DEFECT_TYPES",
    "FAMILIES",
    "ClipSample",
    "DefectInjection",
    "FarmGenerator",
    "Layout",
    "LithoSimulator",
    "NoDefectSite",
    "OpticsSettings",
    "ResistSettings",
    "SocsKernels",
    "Variant",
    "abbe_aerial",
    "applicable_defects",
    "bias_rects",
    "compute_socs_kernels",
    "defect_severity",
    "generate_layout",
    "inject_defect",
    "manhattan_polygon_to_rects",
    "rasterize",
]
