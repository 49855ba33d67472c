"""The novelty service on the real broker: scores, alerts, alert storms, replicas, model switches,
snapshots of a recreated library topic."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from app.launcher import EmbeddedStack
from app.supervisor import Pipeline
from shared.contracts import AlertRecord, DLQRecord, LibraryEntry, ScoreRecord, Topics
from shared.index import LibraryState
from shared.index.thresholds import ThresholdsFile, save_thresholds
from shared.kafka_io import ensure_topics, make_admin
from shared.settings import CommonSettings
from shared.testing import collect, embedded_result, library_entry, produce

pytestmark = pytest.mark.integration
DIM = 16


def centre(i: int) -> np.ndarray:
    vector = np.zeros(DIM, np.float32)
    vector[i] = 1.0
    return vector


def near(i: int, rng: np.random.Generator, spread: float = 0.05) -> np.ndarray:
    return centre(i) + spread * rng.standard_normal(DIM).astype(np.float32)


def write_thresholds(tmp_path: Path, model_version: str = "test-model") -> None:
    save_thresholds(
        tmp_path / "thresholds.json",
        ThresholdsFile(model_version=model_version, global_threshold=0.2, method="fixed", embedding_dim=DIM),
    )


def start_novelty(stack: EmbeddedStack, tmp_path: Path, replica: int = 0, **extra: str) -> Pipeline:
    thresholds = tmp_path / "thresholds.json"
    if not thresholds.exists():
        write_thresholds(tmp_path)
    pipeline = Pipeline(
        stack,
        service_env={
            "LITHOWATCH_THRESHOLDS_PATH": str(thresholds),
            "LITHOWATCH_SNAPSHOT_DIR": str(tmp_path / "snapshots"),
            "LITHOWATCH_SNAPSHOT_INTERVAL_SECONDS": "1",
            "LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000",
            "LITHOWATCH_SESSION_TIMEOUT_MS": "6000",
            **extra,
        },
    )
    pipeline.start_service("novelty", replica=replica)
    pipeline.wait_ready(120)
    return pipeline


def scores_and_dead_letters(stack: EmbeddedStack, count: int) -> list:
    """Scores and DLQ records, read until ``count`` results are scored."""
    return collect(
        stack.bootstrap,
        [Topics.SCORES, Topics.DLQ],
        lambda rs: len({r.key for r in rs if r.topic == Topics.SCORES}) >= count,
        timeout_seconds=120,
    )


def scores_and_dead_letters_within(stack: EmbeddedStack, seconds: float) -> list:
    """Whatever reaches the scores or DLQ topics in ``seconds`` (waiting results: nothing)."""
    return collect(stack.bootstrap, [Topics.SCORES, Topics.DLQ], lambda rs: False, timeout_seconds=seconds)


def decoded(records: list, topic: str, model: type) -> list:
    return [model.model_validate_json(r.value) for r in records if r.topic == topic]


def test_scores_alerts_storms_and_bad_vectors(stack: EmbeddedStack, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    library = [
        library_entry(f"lib-{c}-{j}", near(c, rng), labels={"family": f"f{c}"})
        for c in range(4)
        for j in range(5)
    ]
    produce(stack.bootstrap, Topics.LIBRARY, library)
    known = [embedded_result(f"known-{c}", near(c, rng)) for c in range(4)]
    burst = [embedded_result(f"burst-{j}", near(9, rng, 0.02)) for j in range(20)]
    lonely = embedded_result("lonely", near(12, rng))
    wrong_dim = embedded_result("wrong-dim", np.ones(DIM + 3, np.float32))
    produce(stack.bootstrap, Topics.EMBEDDED, [*known, *burst, lonely, wrong_dim])
    pipeline = start_novelty(stack, tmp_path)
    try:
        records = collect(
            stack.bootstrap,
            [Topics.SCORES, Topics.ALERTS, Topics.DLQ],
            lambda rs: len({r.key for r in rs if r.topic in (Topics.SCORES, Topics.DLQ)}) >= 26,
            timeout_seconds=120,
        )
    finally:
        pipeline.stop()
    scores = {s.result_id: s for s in decoded(records, Topics.SCORES, ScoreRecord)}
    alerts = decoded(records, Topics.ALERTS, AlertRecord)
    dlq = {d.result_id: d.reason for d in decoded(records, Topics.DLQ, DLQRecord)}
    assert all(scores[f"known-{c}"].decision == "known" for c in range(4))
    assert scores["known-2"].neighbours[0].labels["family"] == "f2"
    assert scores["lonely"].decision == "novel"
    burst_decisions = [scores[f"burst-{j}"].decision for j in range(20)]
    assert burst_decisions.count("novel") == 1 and burst_decisions.count("provisional") == 19
    first = next(s for s in (scores[f"burst-{j}"] for j in range(20)) if s.decision == "novel")
    assert all(
        scores[f"burst-{j}"].provisional_of == f"alert-{first.result_id}"
        for j in range(20)
        if scores[f"burst-{j}"].decision == "provisional"
    )
    assert {a.result_id for a in alerts} == {"lonely", first.result_id}
    assert all(a.neighbours for a in alerts)
    assert dlq == {"wrong-dim": "vector_dim"}


def test_results_of_another_model_wait_for_a_library_of_their_model(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    rng = np.random.default_rng(2)
    produce(
        stack.bootstrap,
        Topics.LIBRARY,
        [library_entry(f"lib-{c}-{j}", near(c, rng)) for c in range(4) for j in range(3)],
    )
    pipeline = start_novelty(stack, tmp_path)
    try:
        # the encoder was switched first: its results reach a novelty replica still on the old library
        results = [embedded_result(f"next-{c}", near(c, rng), model_version="next-model") for c in range(4)]
        produce(stack.bootstrap, Topics.EMBEDDED, results)
        waited = scores_and_dead_letters_within(stack, seconds=12)
        log_text = pipeline.services[0].process.log_path.read_text(errors="replace")
    finally:
        pipeline.stop()
    assert waited == []  # neither scored nor dead-lettered: they wait
    assert "results of model 'next-model' wait: the library holds model 'test-model'" in log_text

    # the library of the new model is published (same ids: it replaces the old entries) and
    # novelty runs with thresholds calibrated for it
    produce(
        stack.bootstrap,
        Topics.LIBRARY,
        [
            library_entry(f"lib-{c}-{j}", near(c, rng), "next-model", labels={"family": f"f{c}"})
            for c in range(4)
            for j in range(3)
        ],
    )
    write_thresholds(tmp_path, "next-model")
    pipeline = start_novelty(stack, tmp_path)
    try:
        records = scores_and_dead_letters(stack, count=4)
    finally:
        pipeline.stop()
    assert decoded(records, Topics.DLQ, DLQRecord) == []
    scores = {s.result_id: s for s in decoded(records, Topics.SCORES, ScoreRecord)}
    assert set(scores) == {f"next-{c}" for c in range(4)}
    for c in range(4):
        assert scores[f"next-{c}"].decision == "known"
        assert scores[f"next-{c}"].neighbours[0].labels == {"family": f"f{c}"}  # the new model's entries


def recreate_library_topic(stack: EmbeddedStack, entries: list[LibraryEntry]) -> None:
    settings = CommonSettings(kafka_bootstrap=stack.bootstrap)
    admin = make_admin(settings)
    try:
        admin.delete_topics([Topics.LIBRARY])
        deadline = time.monotonic() + 30
        while Topics.LIBRARY in admin.list_topics():
            assert time.monotonic() < deadline, "the library topic was not deleted"
            time.sleep(0.2)
    finally:
        admin.close()
    assert ensure_topics(settings, [Topics.LIBRARY]) == [Topics.LIBRARY]
    produce(stack.bootstrap, Topics.LIBRARY, entries)


def scored_neighbours(stack: EmbeddedStack, tmp_path: Path, queries: list) -> tuple[set[str], str]:
    """Start novelty (no provisional entries), score ``queries``; the neighbour ids and the metrics."""
    produce(stack.bootstrap, Topics.EMBEDDED, queries)
    pipeline = start_novelty(stack, tmp_path, LITHOWATCH_NOVELTY_PROVISIONAL="false")
    try:
        wanted = {q.result_id for q in queries}
        records = collect(
            stack.bootstrap,
            [Topics.SCORES],
            lambda rs: wanted <= {r.key.decode() for r in rs if r.key},
            timeout_seconds=120,
        )
        with urllib.request.urlopen(pipeline.services[0].metrics_url, timeout=5) as response:
            metrics_text = response.read().decode()
    finally:
        pipeline.stop()
    scores = [s for s in decoded(records, Topics.SCORES, ScoreRecord) if s.result_id in wanted]
    return {n.id for s in scores for n in s.neighbours}, metrics_text


def test_a_snapshot_of_a_deleted_and_recreated_library_topic_is_refused(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    old = [library_entry(f"old-{i}", rng.standard_normal(DIM)) for i in range(40)]
    produce(stack.bootstrap, Topics.LIBRARY, old)
    start_novelty(stack, tmp_path).stop()  # SIGTERM: a final snapshot of the 40 entries
    assert len(LibraryState.restore(tmp_path / "snapshots", model_version="test-model")) == 40
    refused = 'lithowatch_library_events_total{event="snapshot_refused"} 1.0'

    # recreated with fewer records: the snapshot's offset is past the new topic's end
    recreate_library_topic(stack, [library_entry(f"new-{i}", rng.standard_normal(DIM)) for i in range(10)])
    queries = [embedded_result(f"q-{i}", rng.standard_normal(DIM)) for i in range(10)]
    found, metrics_text = scored_neighbours(stack, tmp_path, queries)
    assert found and all(entry_id.startswith("new-") for entry_id in found)
    assert refused in metrics_text
    snapshot = LibraryState.restore(tmp_path / "snapshots", model_version="test-model")
    assert len(snapshot) == 10 and all(entry_id.startswith("new-") for entry_id in snapshot.index.ids())

    # recreated with more records than the snapshot read: offsets alone would accept it, its topic id not
    recreate_library_topic(stack, [library_entry(f"newer-{i}", rng.standard_normal(DIM)) for i in range(30)])
    queries = [embedded_result(f"r-{i}", rng.standard_normal(DIM)) for i in range(10)]
    found, metrics_text = scored_neighbours(stack, tmp_path, queries)
    assert found and all(entry_id.startswith("newer-") for entry_id in found)
    assert refused in metrics_text


def test_restarted_replica_rebuilds_the_same_index(stack: EmbeddedStack, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    produce(
        stack.bootstrap,
        Topics.LIBRARY,
        [library_entry(f"lib-{i}", rng.standard_normal(DIM)) for i in range(300)],
    )
    pipeline = start_novelty(stack, tmp_path)
    pipeline.stop()  # SIGTERM: the service writes a final snapshot
    snapshot = LibraryState.restore(tmp_path / "snapshots", model_version="test-model")
    assert len(snapshot) == 300
    # more records arrive while no replica runs, including a delete
    produce(
        stack.bootstrap,
        Topics.LIBRARY,
        [
            *[library_entry(f"late-{i}", rng.standard_normal(DIM)) for i in range(50)],
            LibraryEntry(entry_id="lib-0", op="delete", model_version="test-model"),
        ],
    )
    queries = [embedded_result(f"q-{i}", rng.standard_normal(DIM)) for i in range(30)]
    produce(stack.bootstrap, Topics.EMBEDDED, queries)
    # no provisional entries: the library stays exactly what the topic held before the queries
    pipeline = start_novelty(stack, tmp_path, LITHOWATCH_NOVELTY_PROVISIONAL="false")
    try:
        records = collect(stack.bootstrap, [Topics.SCORES], lambda rs: len(rs) >= 30, timeout_seconds=120)
    finally:
        pipeline.stop()
    # an independent full replay of the topic gives the same neighbours
    reference = LibraryState("test-model", DIM)
    for r in collect(stack.bootstrap, [Topics.LIBRARY], lambda rs: len(rs) >= 351, timeout_seconds=30):
        entry = LibraryEntry.model_validate_json(r.value)
        reference.apply(entry, r.partition, r.offset)
    assert "lib-0" not in reference and len(reference) == 349
    for score in decoded(records, Topics.SCORES, ScoreRecord):
        query = next(q for q in queries if q.result_id == score.result_id)
        expected = [
            n.id for n in reference.neighbours(query.embedding.to_array(), 5, exclude={score.result_id})
        ]
        assert [n.id for n in score.neighbours] == expected


def test_results_wait_while_the_library_is_empty_and_are_scored_once_it_arrives(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    pipeline = start_novelty(stack, tmp_path)  # the library topic exists, with nothing in it
    try:
        results = [embedded_result(f"early-{c}", near(c, rng)) for c in range(4)]
        produce(stack.bootstrap, Topics.EMBEDDED, results)
        waited = scores_and_dead_letters_within(stack, seconds=10)
        assert waited == []  # neither scored nor dead-lettered while there is nothing to compare with
        produce(
            stack.bootstrap,
            Topics.LIBRARY,
            [library_entry(f"lib-{c}-{j}", near(c, rng)) for c in range(4) for j in range(3)],
        )
        records = scores_and_dead_letters(stack, count=4)
    finally:
        pipeline.stop()
    assert decoded(records, Topics.DLQ, DLQRecord) == []
    scores = decoded(records, Topics.SCORES, ScoreRecord)
    assert sorted(s.result_id for s in scores) == [f"early-{c}" for c in range(4)]  # each once
    assert all(s.decision == "known" for s in scores)
