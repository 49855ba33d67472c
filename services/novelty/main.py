"""Entry point of the novelty service: library feed, thresholds (hot-reloaded) and the runtime.

The service runs one model: ``LITHOWATCH_MODEL_VERSION``, else the thresholds file's, else
the library's first entry's. A thresholds file is applied only when it was calibrated for
that model and the library's dimension: at start another one is a configuration error; a
changed file that does not fit is refused with a log line and the previous thresholds stay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import Field

from services.novelty.confirm_settings import (
    ACROSS_PROCESS_DEFAULT,
    CANDIDATE_POOL_DEFAULT,
    MARGINAL_WIDTH_FRACTION_DEFAULT,
    MAX_CANDIDATES_DEFAULT,
    PROCESS_LABELS_DEFAULT,
    AcrossProcess,
)
from services.novelty.core import MAX_PROVISIONAL_DEFAULT, NoveltyConfig, NoveltyCore
from services.novelty.library_feed import LibraryFeed
from shared.contracts import LibraryEntry
from shared.errors import ConfigError, DependencyUnavailable
from shared.index import IndexSettings
from shared.index.policy import ThresholdPolicy
from shared.index.thresholds import ThresholdsFile
from shared.runtime import StageRunner
from shared.settings import StageSettings, load_settings

log = logging.getLogger("lithowatch.novelty")


class NoveltySettings(StageSettings):
    thresholds_path: Path | None = None
    default_threshold: float = Field(0.1, ge=0.0, le=2.0)
    model_version: str | None = None
    snapshot_dir: Path | None = None
    snapshot_interval_seconds: float = Field(300.0, gt=0)
    novelty_k: int = Field(5, ge=1, le=100)
    novelty_provisional: bool = True
    # provisional entries held (library and pending); over it the oldest are evicted
    novelty_max_provisional: int = Field(MAX_PROVISIONAL_DEFAULT, ge=1)
    # comma-separated model versions whose results are dead-lettered (model_retired) instead of
    # waiting for a library of their model: leftovers of the previous model after a switch
    novelty_retired_models: str = ""
    index_kind: str = "auto"
    hybrid_confirm: bool = False
    # None: the thresholds file's calibrated gate (lithowatch calibrate), else ConfirmSettings' default
    near_identity_similarity: float | None = Field(None, ge=0.0, le=1.0)
    confirm_candidate_pool: int = Field(CANDIDATE_POOL_DEFAULT, ge=1, le=200)
    confirm_max_candidates: int = Field(MAX_CANDIDATES_DEFAULT, ge=1, le=20)
    # results of different process conditions (these labels, comma-separated) may differ by features at
    # the resolution limit; 0 forgives none
    confirm_marginal_width_fraction: float = Field(MARGINAL_WIDTH_FRACTION_DEFAULT, ge=0.0, le=1.0)
    confirm_process_labels: str = ",".join(PROCESS_LABELS_DEFAULT)
    # "mask_only": between process conditions, agreeing masks alone confirm (the print's change is recorded)
    confirm_across_process: AcrossProcess = ACROSS_PROCESS_DEFAULT


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
        if path is not None:
            if not path.is_file():
                raise ConfigError(f"thresholds file {path} does not exist (run lithowatch calibrate)")
            self.reload()
            self.model_version = self.model_version or self.policy.model_version

    def misfit(self, thresholds: ThresholdsFile) -> str | None:
        """Why ``thresholds`` do not fit the running model and library, or None when they do."""
        if self.model_version is not None and thresholds.model_version != self.model_version:
            return (
                f"calibrated for model {thresholds.model_version!r}; this service runs "
                f"{self.model_version!r}"
            )
        dim, library_dim = thresholds_dim(thresholds), self.library_dim()
        if dim is not None and library_dim is not None and dim != library_dim:
            return f"calibrated for {dim}-d embeddings; the library holds {library_dim}-d vectors"
        return None

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


def main(settings_file: str | None = None) -> int:
    settings = load_settings(NoveltySettings, settings_file)
    watcher = ThresholdsWatcher(settings.thresholds_path, settings.default_threshold, settings.model_version)
    model_version = watcher.model_version
    try:
        index_settings = IndexSettings(kind=settings.index_kind)
    except ValueError as exc:
        raise ConfigError(f"LITHOWATCH_INDEX_KIND: {exc}") from exc
    core: NoveltyCore | None = None

    def forget_pending(entry: LibraryEntry) -> None:
        if core is not None:
            core.pending.forget(entry.entry_id)

    feed = LibraryFeed(
        settings,
        model_version,
        settings.snapshot_dir,
        index_settings,
        settings.snapshot_interval_seconds,
        on_applied=forget_pending,
        max_provisional=settings.novelty_max_provisional,
    )
    watcher.library_dim = lambda: feed.state.dim if feed.state is not None else None
    feed.start()
    watcher.verify()
    confirm = None
    if settings.hybrid_confirm:
        from services.novelty.confirm import HybridConfirmer

        confirm = HybridConfirmer.from_settings(
            settings, lambda: feed.state, watcher.near_identity_similarity
        )
        if settings.near_identity_similarity is not None:
            source = "LITHOWATCH_NEAR_IDENTITY_SIMILARITY"
        elif watcher.near_identity_similarity() is not None:
            source = "the thresholds file (calibrated for the model)"
        else:
            source = "the default: the thresholds file has no calibrated gate (run lithowatch calibrate)"
        log.info(
            "hybrid confirmation: gate %.4f from %s; pool %d, %d checked on pixels; marginal features"
            " forgiven up to %.2f of their drawn width between process conditions %s (across: %s)",
            confirm.gate, source, confirm.settings.candidate_pool, confirm.settings.max_candidates,
            confirm.settings.marginal_width_fraction, ",".join(confirm.settings.process_labels) or "(none)",
            confirm.settings.across_process,
        )
    core = NoveltyCore(
        lambda: feed.state,
        watcher,
        NoveltyConfig(
            k=settings.novelty_k,
            provisional=settings.novelty_provisional,
            max_provisional=settings.novelty_max_provisional,
            retired_models=frozenset(
                version.strip() for version in settings.novelty_retired_models.split(",") if version.strip()
            ),
        ),
        confirm=confirm,
    )

    def tick() -> None:
        feed.poll(timeout_ms=0)
        watcher.check()

    try:
        return StageRunner(core, settings, tick=tick).run()
    finally:
        feed.close()
