"""The align service's settings: read from the environment, and the same defaults as the core's."""

from __future__ import annotations

import pytest

from services.align.main import AlignServiceSettings
from shared.errors import ConfigError
from shared.registration import AlignSettings
from shared.settings import load_settings


def test_defaults_are_the_registration_defaults() -> None:
    assert load_settings(AlignServiceSettings, connection=False).registration() == AlignSettings()


def test_every_align_setting_reaches_the_registration() -> None:
    """Each ``align_*`` field but the failure policy is a field of :class:`AlignSettings`."""
    names = {n for n in AlignServiceSettings.model_fields if n.startswith("align_")} - {"align_on_failure"}
    assert {"align_whole_overlap", "align_refuse_unpinned_rotation", "align_whole_overlap_floor",
            "align_ignore_repeats_beyond_range", "align_whole_overlap_similarity",
            "align_polish_huber_k", "align_repeat_misfit_ratio", "align_min_centre_contrast",
            "align_refuse_mask_repeats"} <= names
    assert all(n.removeprefix("align_") in AlignSettings.model_fields for n in names)


def test_switches_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITHOWATCH_ALIGN_WHOLE_OVERLAP", "false")
    monkeypatch.setenv("LITHOWATCH_ALIGN_REFUSE_UNPINNED_ROTATION", "false")
    monkeypatch.setenv("LITHOWATCH_ALIGN_IGNORE_REPEATS_BEYOND_RANGE", "false")
    monkeypatch.setenv("LITHOWATCH_ALIGN_WHOLE_OVERLAP_SIMILARITY", "false")
    monkeypatch.setenv("LITHOWATCH_ALIGN_WHOLE_OVERLAP_FLOOR", "0.97")
    monkeypatch.setenv("LITHOWATCH_ALIGN_ECC_MOTION", "translation")
    monkeypatch.setenv("LITHOWATCH_ALIGN_OPTICS_SIGMA_PX", "3.5")
    monkeypatch.setenv("LITHOWATCH_ALIGN_PRINT_MODEL", "projection")
    monkeypatch.setenv("LITHOWATCH_ALIGN_POLISH_HUBER_K", "2")
    monkeypatch.setenv("LITHOWATCH_ALIGN_REPEAT_MISFIT_RATIO", "0")
    monkeypatch.setenv("LITHOWATCH_ALIGN_MIN_CENTRE_CONTRAST", "0")
    monkeypatch.setenv("LITHOWATCH_ALIGN_REFUSE_MASK_REPEATS", "false")
    registration = load_settings(AlignServiceSettings, connection=False).registration()
    assert not registration.whole_overlap and not registration.refuse_unpinned_rotation
    assert not registration.ignore_repeats_beyond_range
    assert not registration.whole_overlap_similarity
    assert registration.whole_overlap_floor == 0.97
    assert registration.ecc_motion == "translation"
    assert registration.optics_sigma_px == 3.5
    assert registration.print_model == "projection"
    assert registration.polish_huber_k == 2.0
    assert registration.repeat_misfit_ratio == 0.0
    assert registration.min_centre_contrast == 0.0
    assert not registration.refuse_mask_repeats


def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITHOWATCH_ALIGN_ECC_MOTION", "perspective")
    with pytest.raises(ConfigError, match="LITHOWATCH_ALIGN_ECC_MOTION"):
        load_settings(AlignServiceSettings, connection=False)
