"""Entry point of the novelty service: library feeds, thresholds (hot-reloaded) and the runtime.

The service's own model is ``LITHOWATCH_MODEL_VERSION``, else the thresholds file's, else
the library's first entry's; the thresholds it applies are checked against that model and
the library's dimension (:mod:`services.novelty.thresholds`).

During a model switch (deploy/RUNBOOK.md, "Model rollout") it holds every model in flight:
``LITHOWATCH_NOVELTY_LIBRARY_TOPICS`` names the library topics to follow (each holds one
model's library; :mod:`shared.index.topics`) and ``LITHOWATCH_NOVELTY_EXTRA_THRESHOLDS`` the
thresholds files of the other models; each result is scored against the library and
thresholds of the model that embedded it (:mod:`services.novelty.models`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from services.novelty import NAME
from services.novelty.confirm_settings import (
    ACROSS_PROCESS_DEFAULT,
    CANDIDATE_POOL_DEFAULT,
    MARGINAL_WIDTH_FRACTION_DEFAULT,
    MAX_CANDIDATES_DEFAULT,
    PROCESS_LABELS_DEFAULT,
    AcrossProcess,
    ConfirmSettings,
)
from services.novelty.core import MAX_PROVISIONAL_DEFAULT, Confirm, NoveltyConfig, NoveltyCore
from services.novelty.drift import WINDOW_SIZE_DEFAULT, ScoreDrift
from services.novelty.library_feed import LibraryFeed, LibraryFeeds
from services.novelty.models import ThresholdsByModel, attach_dims, expected_models, log_models, split_list
from services.novelty.stage import NoveltyStage
from services.novelty.thresholds import ThresholdsWatcher
from shared.blobstore import LocalBlobStore
from shared.contracts import EmbeddedResult, LibraryEntry, Neighbour, Topics
from shared.errors import ConfigError
from shared.imageref import ImageLoader
from shared.index import IndexSettings
from shared.index.thresholds import ScoreReference
from shared.runtime import StageRunner
from shared.settings import StageSettings, load_settings

__all__ = ["NoveltySettings", "ThresholdsWatcher", "main"]

log = logging.getLogger(f"lithowatch.{NAME}")


class NoveltySettings(StageSettings):
    thresholds_path: Path | None = None
    default_threshold: float = Field(0.1, ge=0.0, le=2.0)
    model_version: str | None = None
    # comma-separated library topics followed, one model's library each (a model switch holds
    # the old and the new model's: lithowatch library reembed prints the new one's topic)
    novelty_library_topics: str = Topics.LIBRARY
    # comma-separated thresholds files of the other models in flight (each names its model)
    novelty_extra_thresholds: str = ""
    # scores per model in the drift watch's sliding window (lithowatch_novelty_drift)
    novelty_drift_window: int = Field(WINDOW_SIZE_DEFAULT, ge=20)
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

    def novelty_config(self) -> NoveltyConfig:
        """The core's settings, built from these once."""
        return NoveltyConfig(
            k=self.novelty_k,
            provisional=self.novelty_provisional,
            max_provisional=self.novelty_max_provisional,
            retired_models=frozenset(
                version.strip() for version in self.novelty_retired_models.split(",") if version.strip()
            ),
        )

    def confirm_settings(self) -> ConfirmSettings:
        """Hybrid confirmation's settings; the similarity gate only when set here (else calibrated)."""
        overrides: dict[str, Any] = {
            "candidate_pool": self.confirm_candidate_pool,
            "max_candidates": self.confirm_max_candidates,
            "marginal_width_fraction": self.confirm_marginal_width_fraction,
            "process_labels": tuple(k.strip() for k in self.confirm_process_labels.split(",") if k.strip()),
            "across_process": self.confirm_across_process,
        }
        if self.near_identity_similarity is not None:
            overrides["near_identity_similarity"] = self.near_identity_similarity
        return ConfirmSettings(**overrides)


def hybrid_confirmation(
    settings: NoveltySettings, feeds: LibraryFeeds, watcher: ThresholdsWatcher
) -> Confirm:
    """Hybrid duplicate confirmation as configured; its similarity gate is the setting when given,
    else the one calibrated in the thresholds file, else ConfirmSettings' default. Candidates
    come from the library of the model that embedded the result being confirmed."""
    from services.novelty.confirm import HybridConfirmer  # OpenCV: only when confirmation is on

    loader = ImageLoader(LocalBlobStore(settings.blob_root), settings.max_image_pixels)
    gate = None if settings.near_identity_similarity is not None else watcher.near_identity_similarity
    confirming: list[str] = []  # the model of the result being confirmed

    def library() -> Any:
        return feeds.state_for(confirming[-1]) if confirming else feeds.state

    confirmer = HybridConfirmer(loader, settings.confirm_settings(), library, gate)

    def confirm(item: EmbeddedResult, vector: Any, neighbours: list[Neighbour]) -> Any:
        confirming.append(item.model_version)
        try:
            return confirmer(item, vector, neighbours)
        finally:
            confirming.pop()

    if settings.near_identity_similarity is not None:
        source = "LITHOWATCH_NEAR_IDENTITY_SIMILARITY"
    elif watcher.near_identity_similarity() is not None:
        source = "the thresholds file (calibrated for the model)"
    else:
        source = "the default: the thresholds file has no calibrated gate (run lithowatch calibrate)"
    tunables = confirmer.settings
    log.info(
        "hybrid confirmation: gate %.4f from %s; pool %d, %d checked on pixels; marginal features"
        " forgiven up to %.2f of their drawn width between process conditions %s (across: %s)",
        confirmer.gate,
        source,
        tunables.candidate_pool,
        tunables.max_candidates,
        tunables.marginal_width_fraction,
        ",".join(tunables.process_labels) or "(none)",
        tunables.across_process,
    )
    return confirm


def snapshot_dir(root: Path | None, topic: str) -> Path | None:
    """Where a library topic's snapshots go: the base topic's in ``root``, another's beside them."""
    if root is None or topic == Topics.LIBRARY:
        return root
    return root / topic


def score_drift(settings: NoveltySettings, thresholds: ThresholdsByModel) -> ScoreDrift:
    """The drift watch: each model's scores against its thresholds file's reference distribution."""

    def reference(model_version: str) -> ScoreReference | None:
        watcher = thresholds.watchers.get(model_version)
        return watcher.policy.file.score_reference if watcher is not None else None

    def missing(model_version: str) -> None:
        log.warning(
            "no drift gauge for model %s: its thresholds carry no reference distribution of scores "
            "(no thresholds file, or one calibrated before lithowatch recorded it); run lithowatch "
            "calibrate to get one",
            model_version,
        )

    return ScoreDrift(settings.novelty_drift_window, reference, missing)


def main(settings_file: str | None = None) -> int:
    settings = load_settings(NoveltySettings, settings_file)
    watcher = ThresholdsWatcher(settings.thresholds_path, settings.default_threshold, settings.model_version)
    try:
        index_settings = IndexSettings(kind=settings.index_kind)
    except ValueError as exc:
        raise ConfigError(f"LITHOWATCH_INDEX_KIND: {exc}") from exc
    core: NoveltyCore | None = None

    def forget_pending(entry: LibraryEntry) -> None:
        if core is not None:
            core.pending.forget(entry.entry_id)

    extra_paths = [Path(path) for path in split_list(settings.novelty_extra_thresholds)]
    thresholds = ThresholdsByModel.from_paths(watcher, extra_paths, settings.default_threshold)
    topics = split_list(settings.novelty_library_topics) or [Topics.LIBRARY]
    expected = expected_models(topics, watcher.model_version, thresholds.models())
    feeds = LibraryFeeds(
        [
            LibraryFeed(
                settings,
                expected[topic],
                snapshot_dir(settings.snapshot_dir, topic),
                index_settings,
                settings.snapshot_interval_seconds,
                on_applied=forget_pending,
                max_provisional=settings.novelty_max_provisional,
                topic=topic,
            )
            for topic in topics
        ]
    )
    attach_dims(thresholds, feeds)
    feeds.start()
    thresholds.verify()
    log_models(feeds, thresholds)
    confirm = hybrid_confirmation(settings, feeds, watcher) if settings.hybrid_confirm else None
    core = NoveltyCore(
        lambda: next(iter(feeds.states()), None),
        watcher,
        settings.novelty_config(),
        confirm=confirm,
        library_for=feeds.state_for,
        policy_for=thresholds,
    )
    stage = NoveltyStage(
        core, feeds, thresholds, library_topic=feeds.topic_for, drift=score_drift(settings, thresholds)
    )
    try:
        runner = StageRunner(stage, settings)
    except BaseException:
        stage.close()  # once running, the runner closes the stage
        raise
    return runner.run()
