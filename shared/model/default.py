"""The encoder shipped inside the package: what ``up``, ``demo`` and ``eval`` use when no model is given.

It was trained by one documented command (``make default-model``, see docs/real-layouts.md) on
generated families and the SKY130 cell library, and it records that command, its data
and its figures in ``metadata.json``.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import ConfigError

DEFAULT_MODEL_DIR = Path(__file__).resolve().with_name("default_model")


def default_model_path() -> Path:
    """The shipped checkpoint folder; a ConfigError when the installation lacks it."""
    if not (DEFAULT_MODEL_DIR / "metadata.json").is_file():
        raise ConfigError(
            f"{DEFAULT_MODEL_DIR}: the shipped default model is missing from this installation; "
            "give a model (--model / LITHOWATCH_MODEL_PATH) or reinstall lithowatch"
        )
    return DEFAULT_MODEL_DIR
