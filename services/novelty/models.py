"""The models in flight: each one's library topic and thresholds, so results are scored by their own.

During a model switch the novelty service holds, per model version, the library the model's
vectors are compared with (:class:`~services.novelty.library_feed.LibraryFeeds`) and the
thresholds calibrated for it (:class:`ThresholdsByModel`, one
:class:`~services.novelty.thresholds.ThresholdsWatcher` per thresholds file).
"""

from __future__ import annotations

import hashlib
import logging
import operator
from collections.abc import Sequence
from pathlib import Path

from services.novelty import NAME
from services.novelty.library_feed import LibraryFeeds
from services.novelty.thresholds import ThresholdsWatcher
from shared import metrics
from shared.contracts import Topics
from shared.errors import ConfigError, DependencyUnavailable
from shared.index import library_topic
from shared.index.policy import ThresholdPolicy

log = logging.getLogger(f"lithowatch.{NAME}")


def split_list(value: str) -> list[str]:
    """A comma-separated setting as a list, blanks dropped."""
    return [part.strip() for part in value.split(",") if part.strip()]


class ThresholdsByModel:
    """The thresholds of each model in flight, looked up by the model that embedded a result.

    ``primary`` is the service's thresholds file (``LITHOWATCH_THRESHOLDS_PATH``, or the
    default threshold when none is set); ``extra`` those of the other models in flight. A
    model without a file of its own gets the primary's only when no file is configured at
    all (the default threshold); otherwise its results wait for one.

    ``lithowatch_model_info{stage="novelty"}`` and ``lithowatch_thresholds_info`` show every
    model held and its thresholds (each watcher alone would show only the last one it loaded).
    """

    def __init__(self, primary: ThresholdsWatcher, extra: Sequence[ThresholdsWatcher] = ()) -> None:
        self.primary = primary
        self.watchers: dict[str, ThresholdsWatcher] = {}
        for watcher in (primary, *extra):
            model_version = watcher.model_version
            if watcher.path is None or model_version is None:
                continue
            if model_version in self.watchers:
                raise ConfigError(
                    f"two thresholds files for model {model_version!r}: "
                    f"{self.watchers[model_version].path} and {watcher.path}"
                )
            self.watchers[model_version] = watcher
        self._exported: list[object] = []
        self.export_info()

    @classmethod
    def from_paths(
        cls, primary: ThresholdsWatcher, paths: Sequence[Path], default_threshold: float
    ) -> ThresholdsByModel:
        return cls(primary, [ThresholdsWatcher(path, default_threshold, None) for path in paths])

    def models(self) -> list[str]:
        return list(self.watchers)

    def __call__(self, model_version: str) -> ThresholdPolicy:
        watcher = self.watchers.get(model_version)
        if watcher is not None:
            return watcher()
        if not self.watchers:
            return self.primary()  # no file at all: the default threshold, whatever the model
        raise DependencyUnavailable(
            f"no thresholds for model {model_version!r} (held: {', '.join(self.watchers)}); give its "
            "file in LITHOWATCH_NOVELTY_EXTRA_THRESHOLDS"
        )

    def check(self) -> None:
        for watcher in self.all():
            watcher.check()
        self.export_info()

    def export_info(self) -> None:
        """One info series per model held (again only when a thresholds file was reloaded)."""
        watchers = list(self.watchers.values())
        policies = [watcher.policy for watcher in watchers]
        if len(watchers) < 2:  # one model: its watcher's own series
            return
        if len(policies) == len(self._exported) and all(map(operator.is_, policies, self._exported)):
            return
        self._exported = list(policies)
        metrics.MODEL_INFO.clear()
        metrics.THRESHOLDS_INFO.clear()
        for watcher in watchers:
            thresholds = watcher.policy.file
            digest = "default"
            if watcher.path is not None:
                try:
                    digest = hashlib.sha256(watcher.path.read_bytes()).hexdigest()[:12]
                except OSError:
                    digest = "unreadable"
            metrics.MODEL_INFO.labels(NAME, thresholds.model_version).set(1)
            metrics.THRESHOLDS_INFO.labels(thresholds.model_version, digest, str(thresholds.method)).set(1)

    def verify(self) -> None:
        for watcher in self.all():
            watcher.verify()

    def all(self) -> list[ThresholdsWatcher]:
        return [self.primary, *(w for w in self.watchers.values() if w is not self.primary)]


def expected_models(
    topics: Sequence[str], primary_model: str | None, models: Sequence[str]
) -> dict[str, str | None]:
    """The model each library topic should hold: the one whose versioned topic it is, else (the
    base topic) the service's model; None: the first entry's."""
    by_topic = {library_topic(model): model for model in models}
    expected: dict[str, str | None] = {}
    for topic in topics:
        if topic in by_topic:
            expected[topic] = by_topic[topic]
        elif topic == Topics.LIBRARY:
            expected[topic] = primary_model
        else:
            expected[topic] = None
    return expected


def attach_dims(thresholds: ThresholdsByModel, feeds: LibraryFeeds) -> None:
    """Each thresholds file is checked against the dimension of its own model's library."""
    for watcher in thresholds.all():

        def dim(watcher: ThresholdsWatcher = watcher) -> int | None:
            model_version = watcher.model_version
            state = feeds.state_for(model_version) if model_version is not None else feeds.state
            return state.dim if state is not None else None

        watcher.library_dim = dim


def log_models(feeds: LibraryFeeds, thresholds: ThresholdsByModel) -> None:
    for feed in feeds.feeds:
        state = feed.state
        model_version = state.model_version if state is not None else feed.model_version
        watcher = thresholds.watchers.get(model_version or "")
        log.info(
            "library %s: model %s, %d entries; thresholds %s",
            feed.library_topic,
            model_version or "(none yet)",
            len(state) if state is not None else 0,
            watcher.path if watcher is not None else "default",
        )
