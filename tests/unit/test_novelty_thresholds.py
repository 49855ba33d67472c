"""The novelty service applies a thresholds file only when it fits the running model and library."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from services.novelty.main import ThresholdsWatcher
from shared.errors import ConfigError, DependencyUnavailable
from shared.index.thresholds import ClusterThreshold, ThresholdsFile, save_thresholds

MODEL = "enc-v1"


def write(path: Path, bump: int, **fields: object) -> None:
    values: dict[str, object] = {"model_version": MODEL, "global_threshold": 0.2, "method": "fixed"}
    values.update(fields)
    save_thresholds(path, ThresholdsFile.model_validate(values))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))  # a new mtime


def changed(watcher: ThresholdsWatcher) -> None:
    watcher._checked = float("-inf")  # the watcher looks at most every 2 s
    watcher.check()


def test_a_changed_file_for_another_model_or_dimension_is_refused_and_the_old_one_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "thresholds.json"
    write(path, 0, embedding_dim=16)
    library_dim: list[int | None] = [None]
    watcher = ThresholdsWatcher(path, 0.1, None, library_dim=lambda: library_dim[0])
    assert watcher.model_version == MODEL and watcher().global_threshold == pytest.approx(0.2)
    library_dim[0] = 16
    watcher.verify()

    caplog.set_level(logging.ERROR, logger="lithowatch.novelty")
    write(path, 1, model_version="enc-v2", embedding_dim=16, global_threshold=0.5)
    changed(watcher)
    assert watcher().global_threshold == pytest.approx(0.2)
    assert "calibrated for model 'enc-v2'; this service runs 'enc-v1'" in caplog.text
    assert "keeping the previous one" in caplog.text

    caplog.clear()
    cluster = ClusterThreshold(cluster_id=0, centroid=[1.0] + [0.0] * 31, threshold=0.3)
    write(path, 2, global_threshold=0.5, clusters=[cluster])
    changed(watcher)
    assert watcher().global_threshold == pytest.approx(0.2)
    assert "calibrated for 32-d embeddings; the library holds 16-d vectors" in caplog.text
    caplog.clear()
    changed(watcher)  # the same refused file: not logged again
    assert caplog.text == ""

    write(path, 3, embedding_dim=16, global_threshold=0.3)  # fits: applied
    changed(watcher)
    assert watcher().global_threshold == pytest.approx(0.3)


def test_a_file_that_does_not_fit_stops_the_start_or_makes_results_wait(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    write(path, 0, embedding_dim=16)
    with pytest.raises(ConfigError, match="this service runs 'enc-v9'"):
        ThresholdsWatcher(path, 0.1, "enc-v9")
    library_dim: list[int | None] = [None]
    watcher = ThresholdsWatcher(path, 0.1, MODEL, library_dim=lambda: library_dim[0])
    library_dim[0] = 32  # the library turned out to hold other vectors
    with pytest.raises(ConfigError, match="32-d vectors"):
        watcher.verify()
    with pytest.raises(DependencyUnavailable, match="does not fit"):
        watcher()
    # without a thresholds file the default threshold fits any library
    default = ThresholdsWatcher(None, 0.1, None, library_dim=lambda: 32)
    default.verify()
    assert default().global_threshold == pytest.approx(0.1)


def test_the_live_model_and_thresholds_are_exported_as_info_metrics(tmp_path: Path) -> None:
    import hashlib

    from prometheus_client import REGISTRY

    def live(name: str) -> list[dict[str, str]]:
        return [
            dict(sample.labels)
            for family in REGISTRY.collect()
            if family.name == name
            for sample in family.samples
            if sample.value == 1
        ]

    path = tmp_path / "thresholds.json"
    write(path, 0)
    ThresholdsWatcher(path, 0.1, None)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    expected = {"model_version": MODEL, "digest": digest, "method": "fixed"}
    assert live("lithowatch_thresholds_info") == [expected]
    assert live("lithowatch_model_info") == [{"stage": "novelty", "model_version": MODEL}]
    write(path, 1, model_version=MODEL, global_threshold=0.3)
    watcher = ThresholdsWatcher(path, 0.1, None)
    changed(watcher)
    new_digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert [s["digest"] for s in live("lithowatch_thresholds_info")] == [new_digest]  # only the live one
