"""Where each model's reference library lives: one compacted topic per model.

A model's vectors are comparable only with vectors of the same model, so a model switch needs
the library re-embedded with the new model *beside* the old one (blue/green): both are served
until the old model's results are drained. Each library is a topic of its own, keyed by entry
id as before, so tombstones, ``promote`` and ``drop`` keep their meaning per model:

- ``lithowatch.library.v1`` (:data:`BASE_LIBRARY_TOPIC`): the library ``library build`` publishes;
- ``lithowatch.library.v1.<model slug>`` (:func:`library_topic`): the library of a model that
  ``library reembed`` publishes, the slug being the model version with every character Kafka
  does not allow in a topic name replaced by ``_``.
"""

from __future__ import annotations

import re

from shared.contracts import Topics
from shared.errors import ConfigError

BASE_LIBRARY_TOPIC = Topics.LIBRARY
MAX_TOPIC_NAME = 249  # Kafka's limit
_NOT_IN_TOPIC_NAMES = re.compile(r"[^A-Za-z0-9._-]")


def model_slug(model_version: str) -> str:
    """``model_version`` with characters not allowed in a Kafka topic name replaced by ``_``."""
    if not model_version:
        raise ConfigError("a library topic needs a model version")
    return _NOT_IN_TOPIC_NAMES.sub("_", model_version)


def library_topic(model_version: str) -> str:
    """The versioned library topic of ``model_version`` (what ``library reembed`` writes)."""
    name = f"{BASE_LIBRARY_TOPIC}.{model_slug(model_version)}"
    if len(name) > MAX_TOPIC_NAME:
        raise ConfigError(f"the library topic of model {model_version!r} is over {MAX_TOPIC_NAME} characters")
    return name


def is_library_topic(topic: str) -> bool:
    """True for the base library topic and every versioned one."""
    return topic == BASE_LIBRARY_TOPIC or topic.startswith(BASE_LIBRARY_TOPIC + ".")
