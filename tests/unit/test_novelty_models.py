"""Several models in flight: each result is scored against its own model's library and thresholds.

Pure logic over real :class:`LibraryState` objects and the library feeds over in-memory topics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.novelty.core import NoveltyConfig, NoveltyCore, Scored
from services.novelty.library_feed import LibraryFeed, LibraryFeeds
from services.novelty.models import ThresholdsByModel, expected_models
from services.novelty.stage import NoveltyStage
from services.novelty.thresholds import ThresholdsWatcher
from shared.contracts import LibraryEntry, Topics, Vector
from shared.errors import ConfigError, DependencyUnavailable, InputError
from shared.index import IndexSettings, LibraryState, library_topic
from shared.index.policy import ThresholdPolicy
from shared.index.thresholds import ThresholdsFile, save_thresholds
from shared.kafka_io import TopicFollower
from shared.settings import CommonSettings
from shared.testing import InMemoryTopics, embedded_result

OLD, NEW = "enc-old", "enc-new+hybrid"
DIMS = {OLD: 16, NEW: 24}


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def axis(model: str, i: int) -> np.ndarray:
    vector = np.zeros(DIMS[model], np.float32)
    vector[i] = 1.0
    return vector


def entry(entry_id: str, model: str, i: int) -> LibraryEntry:
    return LibraryEntry(entry_id=entry_id, vector=Vector.from_array(axis(model, i)), model_version=model)


def library(model: str) -> LibraryState:
    state = LibraryState(model, DIMS[model])
    for i in range(4):
        state.apply(entry(f"ref-{i}", model, i), 0, i)
    return state


def result(result_id: str, model: str, vector: np.ndarray) -> object:
    return embedded_result(result_id, unit(vector), model_version=model)


def policies(thresholds: dict[str, float]) -> dict[str, ThresholdPolicy]:
    return {
        model: ThresholdPolicy(ThresholdsFile(model_version=model, global_threshold=t, method="fixed"))
        for model, t in thresholds.items()
    }


def core_over(states: dict[str, LibraryState], thresholds: dict[str, float], **config: object) -> NoveltyCore:
    by_model = policies(thresholds)

    def policy_for(model: str) -> ThresholdPolicy:
        if model not in by_model:
            raise DependencyUnavailable(f"no thresholds for {model}")
        return by_model[model]

    return NoveltyCore(
        lambda: next(iter(states.values()), None),
        lambda: by_model[OLD],
        NoveltyConfig(**config),  # type: ignore[arg-type]
        library_for=states.get,
        policy_for=policy_for,
    )


def test_a_mixed_batch_is_scored_each_by_its_own_models_library_and_thresholds() -> None:
    core = core_over({OLD: library(OLD), NEW: library(NEW)}, {OLD: 0.2, NEW: 0.3})
    rng = np.random.default_rng(0)
    batch = [
        result("old-known", OLD, axis(OLD, 1) + 0.02 * rng.standard_normal(DIMS[OLD])),
        result("new-known", NEW, axis(NEW, 2) + 0.02 * rng.standard_normal(DIMS[NEW])),
        result("new-novel", NEW, axis(NEW, 20)),
        result("old-novel", OLD, axis(OLD, 12)),
    ]
    outcomes = core.process_batch(batch)  # type: ignore[arg-type]
    scores = {o.score.result_id: o for o in outcomes if isinstance(o, Scored)}
    assert set(scores) == {"old-known", "new-known", "new-novel", "old-novel"}
    assert scores["old-known"].score.decision == "known" and scores["old-known"].score.threshold == 0.2
    assert scores["new-known"].score.decision == "known" and scores["new-known"].score.threshold == 0.3
    assert scores["old-known"].score.neighbours[0].id == "ref-1"
    assert scores["new-known"].score.neighbours[0].id == "ref-2"
    for rid, model in (("new-novel", NEW), ("old-novel", OLD)):
        verdict = scores[rid]
        assert verdict.score.decision == "novel" and verdict.score.model_version == model
        assert verdict.provisional_entry is not None and verdict.provisional_entry.model_version == model


def test_pending_entries_of_one_model_never_meet_the_others_vectors() -> None:
    core = core_over({OLD: library(OLD), NEW: library(NEW)}, {OLD: 0.2, NEW: 0.2})
    first = core.process_batch([result("burst-old", OLD, axis(OLD, 12))])  # type: ignore[list-item]
    second = core.process_batch([result("burst-new", NEW, axis(NEW, 20))])  # type: ignore[list-item]
    third = core.process_batch([result("burst-new-2", NEW, axis(NEW, 20))])  # type: ignore[list-item]
    assert [o.score.decision for o in (*first, *second, *third) if isinstance(o, Scored)] == [
        "novel",
        "novel",
        "provisional",
    ]


def test_results_of_a_model_without_a_library_wait_and_a_retired_ones_are_dead_lettered() -> None:
    core = core_over({OLD: library(OLD)}, {OLD: 0.2, NEW: 0.2}, retired_models=frozenset({"enc-gone"}))
    with pytest.raises(DependencyUnavailable, match="'enc-new\\+hybrid' wait"):
        core.process_batch([result("a", OLD, axis(OLD, 1)), result("b", NEW, axis(NEW, 1))])  # type: ignore[list-item]
    gone = embedded_result("c", unit(axis(OLD, 1)), model_version="enc-gone")
    [outcome] = core.process_batch([gone])
    assert isinstance(outcome, InputError) and outcome.reason == "model_retired"


def test_results_of_a_model_without_thresholds_wait() -> None:
    core = core_over({OLD: library(OLD), NEW: library(NEW)}, {OLD: 0.2})
    with pytest.raises(DependencyUnavailable, match="no thresholds"):
        core.process_batch([result("b", NEW, axis(NEW, 1))])  # type: ignore[list-item]


def test_library_topics_are_named_by_model_and_legal_for_kafka() -> None:
    topic = library_topic("resnet18-w16-contrastive+hybrid-0123456789ab")
    assert topic == "lithowatch.library.v1.resnet18-w16-contrastive_hybrid-0123456789ab"
    assert expected_models([Topics.LIBRARY, library_topic(NEW), "elsewhere"], OLD, [NEW]) == {
        Topics.LIBRARY: OLD,
        library_topic(NEW): NEW,
        "elsewhere": None,
    }


def feed_of(topics: InMemoryTopics, topic: str, model: str | None) -> LibraryFeed:
    return LibraryFeed(
        CommonSettings(kafka_bootstrap="unused:9092"),
        model,
        None,
        IndexSettings(kind="flat"),
        open_follower=lambda: TopicFollower(topics.consumer(), topic),
        read_topic_id=lambda: None,
        topic=topic,
    )


def test_feeds_hold_one_library_per_topic_and_route_provisional_entries_to_their_models_topic() -> None:
    new_topic = library_topic(NEW)
    topics = InMemoryTopics({Topics.LIBRARY: 1, new_topic: 1})
    for i in range(3):
        topics.append(Topics.LIBRARY, entry(f"e{i}", OLD, i).model_dump_json().encode())
        topics.append(new_topic, entry(f"e{i}", NEW, i).model_dump_json().encode())
    feeds = LibraryFeeds([feed_of(topics, Topics.LIBRARY, OLD), feed_of(topics, new_topic, NEW)])
    feeds.start(catch_up_timeout_seconds=5)
    assert feeds.models() == [OLD, NEW]
    old_state, new_state = feeds.state_for(OLD), feeds.state_for(NEW)
    assert old_state is not None and old_state.dim == DIMS[OLD] and len(old_state) == 3
    assert new_state is not None and new_state.dim == DIMS[NEW] and len(new_state) == 3
    topics.append(new_topic, None, key=b"e0")  # a drop in the new library leaves the old one alone
    assert feeds.poll() == 1
    assert "e0" not in new_state and "e0" in old_state

    core = core_over({OLD: old_state, NEW: new_state}, {OLD: 0.2, NEW: 0.2})
    stage = NoveltyStage(core, feeds, library_topic=feeds.topic_for)
    [old_out, new_out] = stage.process_batch(
        [result("n-old", OLD, axis(OLD, 9)), result("n-new", NEW, axis(NEW, 9))]  # type: ignore[list-item]
    )
    assert not isinstance(old_out, InputError) and not isinstance(new_out, InputError)
    for outputs, library_out in ((old_out, Topics.LIBRARY), (new_out, new_topic)):
        topics_out = [o.topic for o in outputs]
        assert Topics.SCORES in topics_out and Topics.ALERTS in topics_out
        assert [t for t in topics_out if t.startswith(Topics.LIBRARY)] == [library_out]
    feeds.close()


def test_two_topics_holding_one_model_are_refused() -> None:
    other = library_topic("copy")
    topics = InMemoryTopics({Topics.LIBRARY: 1, other: 1})
    topics.append(Topics.LIBRARY, entry("e", OLD, 0).model_dump_json().encode())
    topics.append(other, entry("e", OLD, 0).model_dump_json().encode())
    feeds = LibraryFeeds([feed_of(topics, Topics.LIBRARY, None), feed_of(topics, other, None)])
    with pytest.raises(ConfigError, match="same model"):
        feeds.start(catch_up_timeout_seconds=5)


def test_thresholds_by_model_answer_per_model_and_refuse_two_files_of_one(tmp_path: Path) -> None:
    root = tmp_path
    for model, value in ((OLD, 0.2), (NEW, 0.4)):
        save_thresholds(
            root / f"{model}.json",
            ThresholdsFile(model_version=model, global_threshold=value, method="fixed"),
        )
    primary = ThresholdsWatcher(root / f"{OLD}.json", 0.1, None)
    thresholds = ThresholdsByModel.from_paths(primary, [root / f"{NEW}.json"], 0.1)
    assert thresholds(OLD).global_threshold == 0.2 and thresholds(NEW).global_threshold == 0.4
    with pytest.raises(DependencyUnavailable, match="no thresholds for model 'other'"):
        thresholds("other")
    with pytest.raises(ConfigError, match="two thresholds files"):
        ThresholdsByModel.from_paths(primary, [root / f"{OLD}.json"], 0.1)
    no_files = ThresholdsByModel(ThresholdsWatcher(None, 0.15, None))
    assert no_files("any-model").global_threshold == 0.15


def test_every_model_held_is_exported_with_its_thresholds(tmp_path: Path) -> None:
    from shared import metrics

    for model, value in ((OLD, 0.2), (NEW, 0.4)):
        save_thresholds(
            tmp_path / f"{model}.json",
            ThresholdsFile(model_version=model, global_threshold=value, method="fixed"),
        )
    primary = ThresholdsWatcher(tmp_path / f"{OLD}.json", 0.1, None)
    thresholds = ThresholdsByModel.from_paths(primary, [tmp_path / f"{NEW}.json"], 0.1)

    def series(gauge: object) -> set[tuple[str, ...]]:
        return {tuple(s.labels.values()) for m in gauge.collect() for s in m.samples if s.value == 1}  # type: ignore[attr-defined]

    assert {(stage, model) for stage, model in series(metrics.MODEL_INFO)} == {
        ("novelty", OLD),
        ("novelty", NEW),
    }
    assert {labels[0] for labels in series(metrics.THRESHOLDS_INFO)} == {OLD, NEW}
    thresholds.check()  # nothing reloaded: the series stay
    assert len(series(metrics.MODEL_INFO)) == 2
