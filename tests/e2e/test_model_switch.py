"""A model switch and its rollback while a farm streams: nothing dead-lettered, skipped or mis-scored.

The library is built with model A on the base library topic, re-embedded with model B (another
network, another dimension) into B's own library topic by ``library reembed``, and B's
thresholds are calibrated. Novelty follows both libraries with both thresholds files. While the
farm streams at a steady rate, embed is switched to B (stopped, restarted with B's checkpoint)
and later back to A. Every result is scored exactly once, by the model that embedded it, with
that model's thresholds; nothing goes to the DLQ; alerts are raised under A, under B and under A
again after the rollback.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from farm_streams import known_farm, stream_settings
from pipeline_env import service_env

from app.demo.assets import DemoAssets, calibrate
from app.demo.run import STAGES
from app.launcher import EmbeddedStack, wait_until
from app.supervisor import Pipeline, RunningService
from services.novelty.library_cli import build_library
from services.novelty.reembed import read_library_records, run_reembed
from services.simfarm.main import publish
from shared.contracts import (
    AlertRecord,
    DuplicateRecord,
    EmbeddedResult,
    ScoreRecord,
    SimResult,
    Topics,
)
from shared.index import library_topic, provisional_entry_id
from shared.index.thresholds import load_thresholds
from shared.model import build_untrained, load_encoder, save_encoder
from shared.testing import collect

pytestmark = pytest.mark.e2e

COUNT = 120
RATE_PER_SECOND = 2.0


@pytest.fixture(scope="module")
def model_b(e2e_assets: DemoAssets, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A second encoder (another network and dimension than the assets' A) and its thresholds."""
    root = tmp_path_factory.mktemp("model-b")
    model_dir = root / "model"
    encoder = build_untrained("resnet18-w16", "mask,print", 64, seed=99)
    save_encoder(encoder, model_dir, {"objective": "untrained", "metrics": {}})
    thresholds, _report = calibrate(e2e_assets.library_dir, model_dir, root, lambda _m: None)
    return model_dir, thresholds


def allowed_thresholds(path: Path) -> set[float]:
    thresholds = load_thresholds(path)
    return {round(thresholds.global_threshold, 9)} | {
        round(c.threshold, 9) for c in thresholds.clusters or []
    }


def stop_embed(pipeline: Pipeline, running: RunningService) -> None:
    """Stop embed: it finishes its batch and commits, so nothing it embedded is embedded again."""
    running.process.stop()
    pipeline.services.remove(running)
    pipeline.stack.children.remove(running.process)


def start_embed(pipeline: Pipeline, replica: int, model_dir: Path) -> RunningService:
    running = pipeline.start_service(
        "embed", replica=replica, extra_env={"LITHOWATCH_MODEL_PATH": str(model_dir)}
    )
    pipeline.wait_ready(180, [running])
    return running


def test_switching_the_model_and_back_mid_stream_scores_every_result_by_its_own_model(
    stack: EmbeddedStack, e2e_assets: DemoAssets, model_b: tuple[Path, Path], tmp_path: Path
) -> None:
    model_b_dir, thresholds_b = model_b
    encoder_a = load_encoder(e2e_assets.model_dir, device="cpu")
    encoder_b = load_encoder(model_b_dir, device="cpu")
    assert encoder_a.dim != encoder_b.dim
    settings = stream_settings(stack)
    published_entries = build_library(settings, e2e_assets.library_dir, e2e_assets.model_dir)
    report = run_reembed(settings, encoder_b, progress=False)
    assert report.left_out == [] and report.embedded == published_entries
    assert report.target_topic == library_topic(encoder_b.model_version)

    env = {
        **service_env(e2e_assets, tmp_path),
        "LITHOWATCH_NOVELTY_LIBRARY_TOPICS": f"{Topics.LIBRARY},{report.target_topic}",
        "LITHOWATCH_NOVELTY_EXTRA_THRESHOLDS": str(thresholds_b),
    }
    pipeline = Pipeline(stack, service_env=env)
    try:
        pipeline.start_all(list(STAGES))
        pipeline.wait_ready(240)
        embed = next(s for s in pipeline.services if s.name == "embed")

        farm = known_farm(settings, seed=23, novel_fraction=0.25, job_id="switch")
        published: list[str] = []

        def recorded() -> Iterator[SimResult]:
            for result in farm:
                published.append(result.result_id)
                yield result

        publisher = threading.Thread(
            target=publish,
            args=(recorded(), settings, COUNT, RATE_PER_SECOND),
            kwargs={"progress": False},
            name="switch-farm",
        )
        publisher.start()
        try:
            assert wait_until(lambda: len(published) >= COUNT // 3, 120, 0.2)
            stop_embed(pipeline, embed)  # roll out B
            embed = start_embed(pipeline, 1, model_b_dir)
            assert wait_until(lambda: len(published) >= 2 * COUNT // 3, 120, 0.2)
            stop_embed(pipeline, embed)  # roll back to A: results published from here on are A's
            rolled_back_at = len(published)
            embed = start_embed(pipeline, 2, e2e_assets.model_dir)
        finally:
            publisher.join()
        assert len(published) == COUNT
        expected = set(published)

        def settled(records: list[Any]) -> bool:
            done = {r.key.decode() for r in records if r.topic in (Topics.SCORES, Topics.DUPLICATES)}
            return expected <= done

        records = collect(
            stack.bootstrap,
            [Topics.EMBEDDED, Topics.SCORES, Topics.DUPLICATES, Topics.ALERTS, Topics.DLQ],
            settled,
            300,
        )
    finally:
        pipeline.stop()
    libraries = {
        encoder_a.model_version: read_library_records(settings, Topics.LIBRARY).entries,
        encoder_b.model_version: read_library_records(settings, report.target_topic).entries,
    }

    def of(topic: str, model: type[Any]) -> list[Any]:
        return [model.model_validate_json(r.value) for r in records if r.topic == topic]

    embedded: dict[str, list[str]] = defaultdict(list)
    for item in of(Topics.EMBEDDED, EmbeddedResult):
        embedded[item.result_id].append(item.model_version)
    scores: dict[str, list[ScoreRecord]] = defaultdict(list)
    for score in of(Topics.SCORES, ScoreRecord):
        scores[score.result_id].append(score)
    duplicates = {d.result_id for d in of(Topics.DUPLICATES, DuplicateRecord)}
    alerts = of(Topics.ALERTS, AlertRecord)
    dlq = [r for r in records if r.topic == Topics.DLQ]
    position = {result_id: i for i, result_id in enumerate(published)}
    by_model: dict[str, int] = defaultdict(int)
    for versions in embedded.values():
        by_model[versions[0]] += 1
    print(
        f"\nmodel switch: {len(expected)} results, embedded by A {by_model[encoder_a.model_version]}, "
        f"by B {by_model[encoder_b.model_version]}; scored {len(scores)}, duplicates {len(duplicates)}, "
        f"alerts {len(alerts)} (B: {sum(a.model_version == encoder_b.model_version for a in alerts)}), "
        f"dlq {len(dlq)}; rolled back after {rolled_back_at} published"
    )

    assert dlq == []
    assert expected <= set(scores) | duplicates, "a result was neither scored nor a duplicate"
    assert not set(scores) & duplicates
    dims = {encoder_a.model_version: encoder_a.dim, encoder_b.model_version: encoder_b.dim}
    allowed = {
        encoder_a.model_version: allowed_thresholds(e2e_assets.thresholds_path),
        encoder_b.model_version: allowed_thresholds(thresholds_b),
    }
    for result_id, versions in embedded.items():
        assert len(versions) == 1, f"{result_id} embedded {versions}"
        [score] = scores[result_id]  # scored exactly once
        assert score.model_version == versions[0], f"{result_id} scored by another model"
        assert round(score.threshold, 9) in allowed[score.model_version], "another model's thresholds"
    assert set(scores) <= set(embedded)
    assert by_model[encoder_a.model_version] > 0 and by_model[encoder_b.model_version] > 0
    for result_id in published[rolled_back_at:]:
        if result_id in embedded:
            assert embedded[result_id] == [encoder_a.model_version], "embedded by B after the rollback"

    for alert in alerts:  # each novel result's provisional entry went to its own model's library
        for model_version, entries in libraries.items():
            entry = entries.get(provisional_entry_id(alert.result_id))
            if model_version == alert.model_version:
                assert entry is not None and entry.model_version == model_version
                assert entry.vector is not None and entry.vector.dim == dims[model_version]
            else:
                assert entry is None, f"{alert.result_id}'s entry in the other model's library"

    def alerted(model_version: str, after: int = 0, before: int = COUNT) -> int:
        return sum(
            1
            for alert in alerts
            if alert.model_version == model_version and after <= position[alert.result_id] < before
        )

    first_b = min(position[r] for r, v in embedded.items() if v[0] == encoder_b.model_version)
    assert alerted(encoder_a.model_version, before=first_b) > 0, "no alert before the switch"
    assert alerted(encoder_b.model_version) > 0, "no alert under the new model"
    assert alerted(encoder_a.model_version, after=rolled_back_at) > 0, "no alert after the rollback"
