"""The novelty service's thresholds: loaded from the calibration file, hot-reloaded when it changes.

A thresholds file is applied only when it was calibrated for the running model and the
library's dimension: at start another one is a configuration error; a changed file that
does not fit is refused with a log line and the previous thresholds stay.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from services.novelty import NAME
from shared import metrics
from shared.errors import ConfigError, DependencyUnavailable
from shared.index.policy import ThresholdPolicy
from shared.index.thresholds import ThresholdsFile

log = logging.getLogger(f"lithowatch.{NAME}")


def thresholds_dim(thresholds: ThresholdsFile) -> int | None:
    """The embedding dimension a thresholds file was calibrated for, when it says."""
    if thresholds.embedding_dim is not None:
        return thresholds.embedding_dim
    return len(thresholds.clusters[0].centroid) if thresholds.clusters else None


class ThresholdsWatcher:
    """Reloads the thresholds file when it changes; keeps the last good one on errors.

    A file is applied only when it fits the running model: its ``model_version`` is the
    service's (``model_version``, else the first file's) and its dimension, when it names
    one, the library's (``library_dim``, once the library is loaded). At start a file that
    does not fit is a ConfigError; a changed one is refused (logged once per change); should
    the library load later with another dimension, results wait (DependencyUnavailable).
    """

    def __init__(
        self,
        path: Path | None,
        default_threshold: float,
        model_version: str | None,
        library_dim: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.path = path
        self.library_dim = library_dim
        self._mtime = 0.0
        self._checked = 0.0
        fallback = ThresholdsFile(
            model_version=model_version or "unknown",
            global_threshold=default_threshold,
            method="default",
            method_reason="no thresholds file configured",
        )
        self.policy = ThresholdPolicy(fallback)
        self.model_version = model_version
        self._export("default")
        if path is not None:
            if not path.is_file():
                raise ConfigError(f"thresholds file {path} does not exist (run lithowatch calibrate)")
            self.reload()
            self.model_version = self.model_version or self.policy.model_version

    def misfit(self, thresholds: ThresholdsFile) -> str | None:
        """Why ``thresholds`` do not fit the running model and library, or None when they do."""
        if self.model_version is not None and thresholds.model_version != self.model_version:
            return (
                f"calibrated for model {thresholds.model_version!r}; this service runs {self.model_version!r}"
            )
        dim, library_dim = thresholds_dim(thresholds), self.library_dim()
        if dim is not None and library_dim is not None and dim != library_dim:
            return f"calibrated for {dim}-d embeddings; the library holds {library_dim}-d vectors"
        return None

    def _export(self, digest: str) -> None:
        """Which model and thresholds are live, for the dashboards (``lithowatch_*_info``)."""
        model_version = self.policy.file.model_version
        metrics.set_info(
            metrics.THRESHOLDS_INFO,
            model_version=model_version,
            digest=digest,
            method=str(self.policy.file.method),
        )
        metrics.set_info(metrics.MODEL_INFO, stage=NAME, model_version=model_version)

    def verify(self) -> None:
        """ConfigError when the thresholds in use do not fit (checked once the library is loaded)."""
        if self.path is not None and (why := self.misfit(self.policy.file)) is not None:
            raise ConfigError(f"thresholds file {self.path}: {why}")

    def reload(self) -> None:
        """Load the file; ConfigError (the previous thresholds stay) when it is invalid or does not fit."""
        assert self.path is not None
        mtime = self.path.stat().st_mtime
        policy = ThresholdPolicy.from_file(self.path)
        if (why := self.misfit(policy.file)) is not None:
            self._mtime = mtime  # refused once; a newer file is looked at again
            raise ConfigError(f"{self.path}: {why}")
        self.policy = policy
        self._mtime = mtime
        self._export(hashlib.sha256(self.path.read_bytes()).hexdigest()[:12])
        log.info(
            "thresholds loaded from %s: global %.4f, %d clusters",
            self.path,
            self.policy.global_threshold,
            len(self.policy.file.clusters or []),
        )

    def check(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self._checked < 2.0:
            return
        self._checked = now
        try:
            if self.path.stat().st_mtime != self._mtime:
                self.reload()
        except (OSError, ConfigError) as exc:
            log.error("thresholds file %s not reloaded, keeping the previous one: %s", self.path, exc)

    def __call__(self) -> ThresholdPolicy:
        """The thresholds in use; results wait while they do not fit the library (loaded after
        the start, of another dimension) rather than being scored by the wrong ones."""
        if self.path is not None and (why := self.misfit(self.policy.file)) is not None:
            raise DependencyUnavailable(
                f"thresholds file {self.path} does not fit: {why} (calibrate for this library)"
            )
        return self.policy

    def near_identity_similarity(self) -> float | None:
        """The hybrid confirmation gate calibrated for the model (None when the file has none)."""
        gate = self.policy.file.near_identity
        return gate.similarity if gate is not None else None
