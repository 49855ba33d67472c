"""The configuration page (docs/configuration.md) documents every setting a service reads."""

from __future__ import annotations

from pathlib import Path

from services.align.main import AlignServiceSettings
from services.dedupe.main import DedupeServiceSettings
from services.embed.main import EmbedSettings
from services.explain.main import ExplainSettings
from services.novelty.main import NoveltySettings
from shared.settings import StageSettings

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = CONFIGURATION.read_text()
    classes = (
        StageSettings,
        DedupeServiceSettings,
        AlignServiceSettings,
        EmbedSettings,
        NoveltySettings,
        ExplainSettings,
    )
    names = {f"LITHOWATCH_{name.upper()}" for cls in classes for name in cls.model_fields}
    missing = sorted(n for n in names if n not in text)
    assert not missing, f"docs/configuration.md lacks: {missing}"
