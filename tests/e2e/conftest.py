"""Fixtures for end-to-end tests: demo assets and the whole pipeline as processes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pipeline_env import service_env

from app.demo.assets import DemoAssets, DemoConfig, calibrate, make_datasets, prepare_model
from app.launcher import EmbeddedStack
from app.supervisor import Pipeline
from services.novelty.library_cli import build_library
from shared.settings import CommonSettings

STAGES = ("dedupe", "align", "embed", "novelty", "explain")


@pytest.fixture(scope="session")
def e2e_assets(tmp_path_factory: pytest.TempPathFactory) -> DemoAssets:
    """Library and stream data sets, the untrained encoder and calibrated thresholds (quick demo size)."""
    root = tmp_path_factory.mktemp("e2e-assets")
    cfg = replace(DemoConfig.quick(), model="untrained")  # the figures these tests expect were set with it
    library_dir, stream_dir = make_datasets(cfg, root / "data", lambda _m: None)
    model_dir = prepare_model(cfg, library_dir, root, lambda _m: None)
    thresholds, report = calibrate(library_dir, model_dir, root, lambda _m: None)
    return DemoAssets(library_dir, stream_dir, model_dir, thresholds, report)


def publish_library(stack: EmbeddedStack, assets: DemoAssets) -> int:
    settings = CommonSettings(
        kafka_bootstrap=stack.bootstrap, redis_url=stack.redis, blob_root=stack.workdir / "blobs"
    )
    return build_library(settings, assets.library_dir, assets.model_dir)


@pytest.fixture
def pipeline_env_extra() -> dict[str, str]:
    """Settings a test module adds to every service's environment (override it there)."""
    return {}


@pytest.fixture
def pipeline(stack: EmbeddedStack, e2e_assets: DemoAssets, tmp_path: Path,
             pipeline_env_extra: dict[str, str]) -> Iterator[Pipeline]:
    """Every stage as its own process against a fresh broker and Redis, library published, all ready."""
    publish_library(stack, e2e_assets)
    running = Pipeline(stack, service_env={**service_env(e2e_assets, tmp_path), **pipeline_env_extra})
    try:
        running.start_all(list(STAGES))
        running.wait_ready(240)
        yield running
    finally:
        running.stop()
