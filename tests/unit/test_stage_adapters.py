"""The stage adapters: each core's outcomes become the runtime's outputs, and are counted."""

from __future__ import annotations

import numpy as np
from memory_fakes import MemoryBlobStore, MemoryImages
from prometheus_client import REGISTRY
from test_align_core import unique, window_pair
from test_explain_core import alert
from test_novelty_core import DIM, near, result, unit, with_library

from services.align import NAME as ALIGN
from services.align.core import AlignCore
from services.align.stage import AlignStage
from services.explain import NAME as EXPLAIN
from services.explain.core import ExplainCore
from services.explain.routes import AlertPages
from services.explain.stage import ExplainStage
from services.novelty import NAME as NOVELTY
from services.novelty.stage import NoveltyStage
from shared import metrics
from shared.contracts import (
    AlertRecord,
    AlignedResult,
    DuplicateRecord,
    EmbeddedResult,
    ExplanationRecord,
    LibraryEntry,
    ScoreRecord,
    Topics,
    UniqueResult,
    Vector,
)
from shared.errors import InputError
from shared.stage import Output


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def messages(stage: str, outcome: str) -> float:
    return counted("lithowatch_messages_total", stage=stage, outcome=outcome)


# -- align -----------------------------------------------------------------------------------------


def test_align_sends_aligned_and_flagged_results_onward_and_counts_them() -> None:
    images = MemoryImages()
    mask, printed, _ = window_pair(5, 3, 2)
    noise = (np.random.default_rng(1).random(mask.shape) > 0.5).astype(np.float32)
    items = [
        unique("fits", images, mask, printed),
        unique("noise", images, mask, noise),
        unique("bad", images, mask, printed[:32, :32]),
    ]
    stage = AlignStage(AlignCore(images, on_failure="flag"))
    assert (stage.name, stage.input_topic, stage.input_model) == (ALIGN, Topics.UNIQUE, UniqueResult)
    before = messages(ALIGN, "aligned"), messages(ALIGN, "flagged")
    fits, flagged, bad = stage.process_batch(items)
    for routed_result, rid in ((fits, "fits"), (flagged, "noise")):
        assert not isinstance(routed_result, InputError)
        (out,) = routed_result
        assert (out.topic, out.key) == (Topics.ALIGNED, rid) and isinstance(out.value, AlignedResult)
    assert isinstance(flagged[0].value, AlignedResult) and flagged[0].value.alignment_flagged  # type: ignore[index]
    assert isinstance(bad, InputError) and bad.reason == "shape_mismatch"
    assert (messages(ALIGN, "aligned"), messages(ALIGN, "flagged")) == (before[0] + 1, before[1] + 1)


def test_align_under_the_dlq_policy_hands_the_rejection_to_the_runtime_uncounted() -> None:
    images = MemoryImages()
    mask, _, _ = window_pair(6, 0, 0)
    stage = AlignStage(AlignCore(images, on_failure="dlq"))
    before = messages(ALIGN, "flagged")
    (result,) = stage.process_batch([unique("blank", images, mask, np.zeros_like(mask))])
    assert isinstance(result, InputError) and result.reason == "alignment_failed"
    assert messages(ALIGN, "flagged") == before


# -- explain ---------------------------------------------------------------------------------------


def test_explain_publishes_each_explanation_and_shows_the_alert_on_the_pages() -> None:
    images, store = MemoryImages(), MemoryBlobStore()
    pages = AlertPages(store, keep_recent=10)
    stage = ExplainStage(ExplainCore(images, store), pages)
    assert (stage.name, stage.input_topic, stage.input_model) == (EXPLAIN, Topics.ALERTS, AlertRecord)
    good = alert(images, "good")
    bad = alert(images, "bad").model_copy(update={"mask": MemoryImages.missing()})
    explained, rejected = stage.process_batch([good, bad])
    assert not isinstance(explained, InputError)
    (out,) = explained
    assert isinstance(out, Output) and (out.topic, out.key) == (Topics.EXPLANATIONS, "good")
    assert isinstance(out.value, ExplanationRecord) and out.value.alert_id == "alert-good"
    assert isinstance(rejected, InputError) and rejected.reason == "image_missing"
    # the page lists the explained alert (not the rejected one) and serves its panel
    (recent,) = pages.recent_alerts()
    assert recent.alert == good and recent.panel_uri == out.value.panel.uri
    status, content_type, body = pages.alerts_page("/alerts")
    assert status == 200 and content_type.startswith("text/html") and b"alert-good" in body
    assert b"alert-bad" not in body
    key = recent.panel_uri.removeprefix("blob://")
    assert pages.panel_page(f"/panels/{key}") == (200, "image/png", store.get(recent.panel_uri))
    assert pages.panel_page("/panels/nothing.png")[0] == 404
    assert pages.panel_page("/panels/../secret")[0] == 404


def test_explain_without_pages_only_publishes() -> None:
    images, store = MemoryImages(), MemoryBlobStore()
    (result,) = ExplainStage(ExplainCore(images, store)).process_batch([alert(images, "quiet")])
    assert not isinstance(result, InputError) and result[0].topic == Topics.EXPLANATIONS


# -- novelty ---------------------------------------------------------------------------------------


def routed(result: object) -> list[tuple[str, str]]:
    assert not isinstance(result, InputError), result
    return [(out.topic, out.key) for out in result]  # type: ignore[attr-defined]


def decisions(decision: str) -> float:
    return counted("lithowatch_novelty_decisions_total", decision=decision)


def test_novelty_routes_each_verdict_to_its_topics_and_counts_decisions_and_alerts() -> None:
    replica = with_library(threshold=0.2)
    stage = NoveltyStage(replica.core)
    assert (stage.name, stage.input_topic, stage.input_model) == (NOVELTY, Topics.EMBEDDED, EmbeddedResult)
    assert (
        REGISTRY.get_sample_value("lithowatch_novelty_decisions_total", {"decision": "provisional"})
        is not None
    )
    rng = np.random.default_rng(9)
    wrong_dim = result("wrong-dim", near(0, rng)).model_copy(
        update={"embedding": Vector.from_array(unit(np.ones(DIM + 1, np.float32)))}
    )
    batch = [
        result("known-1", near(0, rng)),
        result("novel-1", near(20, rng)),
        result("again-1", near(20, rng, 0.01)),  # within the threshold of novel-1's entry
        wrong_dim,
    ]
    before = {d: decisions(d) for d in ("known", "novel", "provisional")}
    alerts_before = counted("lithowatch_alerts_total")
    known, novel, again, bad = stage.process_batch(batch)
    assert routed(known) == [(Topics.SCORES, "known-1"), (Topics.VERDICTS, "known-1")]
    assert routed(novel) == [
        (Topics.SCORES, "novel-1"),
        (Topics.ALERTS, "novel-1"),
        (Topics.LIBRARY, "provisional/novel-1"),  # the library topic is keyed by entry id
        (Topics.VERDICTS, "novel-1"),
    ]
    assert routed(again) == [(Topics.SCORES, "again-1"), (Topics.VERDICTS, "again-1")]
    values = [out.value for out in novel]  # type: ignore[union-attr]
    assert isinstance(values[0], ScoreRecord) and isinstance(values[1], AlertRecord)
    assert isinstance(values[2], LibraryEntry) and values[2].alert_id == values[1].alert_id
    again_score = again[0].value  # type: ignore[index]
    assert isinstance(again_score, ScoreRecord) and again_score.provisional_of == values[1].alert_id
    assert isinstance(bad, InputError) and bad.reason == "vector_dim"
    assert {d: decisions(d) - before[d] for d in before} == {"known": 1, "novel": 1, "provisional": 1}
    assert counted("lithowatch_alerts_total") == alerts_before + 1


def test_novelty_sends_a_confirmed_duplicate_to_its_topic_counted_by_method_not_as_a_decision() -> None:
    replica = with_library()
    replica.core.confirm = lambda item, vector, neighbours: DuplicateRecord(
        result_id=item.result_id,
        duplicate_of=neighbours[0].id,
        method="embedding+descriptors",
        distance=0.01,
        stage=NOVELTY,
        produced_at=item.produced_at,
    )
    before = {d: decisions(d) for d in ("known", "novel", "provisional")}
    by_method = metrics.DUPLICATES.labels("embedding+descriptors")._value.get()
    (duplicate,) = NoveltyStage(replica.core).process_batch(
        [result("resim", near(1, np.random.default_rng(3)))]
    )
    assert routed(duplicate) == [(Topics.DUPLICATES, "resim"), (Topics.VERDICTS, "resim")]
    assert {d: decisions(d) for d in before} == before
    # the "duplicates by method" panel sees the hybrid methods too
    assert metrics.DUPLICATES.labels("embedding+descriptors")._value.get() == by_method + 1


class FakeFeed:
    def __init__(self) -> None:
        self.polls: list[int] = []
        self.closed = 0

    def poll(self, timeout_ms: int = 0) -> int:
        self.polls.append(timeout_ms)
        return 0

    def close(self) -> None:
        self.closed += 1


class FakeThresholds:
    def __init__(self) -> None:
        self.checks = 0

    def check(self) -> None:
        self.checks += 1


def test_novelty_ticks_read_the_library_without_blocking_and_reload_thresholds_and_close_the_feed() -> None:
    feed, thresholds = FakeFeed(), FakeThresholds()
    stage = NoveltyStage(with_library().core, feed, thresholds)
    stage.tick()
    stage.tick()
    assert feed.polls == [0, 0] and thresholds.checks == 2 and feed.closed == 0
    stage.close()
    assert feed.closed == 1
    bare = NoveltyStage(with_library().core)  # nothing to drive: ticks and close do nothing
    bare.tick()
    bare.close()


def test_the_novelty_service_builds_its_core_and_confirmation_settings_once_from_its_own() -> None:
    from services.novelty.main import NoveltySettings

    settings = NoveltySettings(
        novelty_k=7,
        novelty_retired_models=" enc-v0, ,enc-old",
        near_identity_similarity=0.9,
        confirm_candidate_pool=9,
        confirm_process_labels=" dose, defocus_nm,bias_nm ",
    )
    config = settings.novelty_config()
    assert config.k == 7 and config.retired_models == frozenset({"enc-v0", "enc-old"})
    confirm = settings.confirm_settings()
    assert confirm.near_identity_similarity == 0.9 and confirm.candidate_pool == 9
    assert confirm.process_labels == ("dose", "defocus_nm", "bias_nm")
    calibrated = NoveltySettings(near_identity_similarity=None).confirm_settings()
    assert calibrated.near_identity_similarity == type(calibrated)().near_identity_similarity  # the default
