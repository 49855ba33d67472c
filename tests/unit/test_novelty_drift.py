"""Score drift: the reference calibration writes, PSI and KS over a window, the stage's export."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.novelty.drift import (
    ScoreDrift,
    bin_shares,
    ks_distance,
    population_stability_index,
    reference_cdf,
)
from services.novelty.stage import export_drift
from shared.errors import ConfigError, ContractError
from shared.index.thresholds import ScoreReference, ThresholdsFile, load_thresholds, save_thresholds
from toolkit.calibration.recipe import run_calibration
from toolkit.calibration.reference import leave_one_out_scores, score_reference

RULE_PSI = 0.25  # the alert's threshold in deploy/prometheus/rules/lithowatch.rules.yml


def known_scores(rng: np.random.Generator, n: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Scores shaped like known results' (skewed, positive): a gamma around 0.01."""
    return rng.gamma(2.0, 0.005 * scale, n) + shift


@pytest.fixture
def reference() -> ScoreReference:
    return score_reference(known_scores(np.random.default_rng(0), 2000))


# --------------------------------------------------------------------------- the reference


def test_reference_bins_hold_equal_shares_and_quantiles_span_the_scores() -> None:
    scores = known_scores(np.random.default_rng(1), 1000)
    ref = score_reference(scores)
    assert len(ref.bin_edges) == 9 and len(ref.bin_proportions) == 10
    assert all(p == pytest.approx(0.1, abs=0.002) for p in ref.bin_proportions)
    assert ref.quantiles[0] == pytest.approx(scores.min()) and ref.quantiles[-1] == pytest.approx(
        scores.max()
    )
    assert ref.n_scores == 1000


def test_reference_merges_bins_of_tied_scores_and_leaves_none_empty() -> None:
    scores = np.concatenate([np.zeros(600), np.linspace(0.01, 0.05, 400)])  # 60 % exact zeros
    ref = score_reference(scores)
    assert ref.bin_edges[0] > 0.0
    assert ref.bin_proportions[0] == pytest.approx(0.699)  # the zeros and the scores below the 0.7 quantile
    assert min(ref.bin_proportions) > 0
    assert sum(ref.bin_proportions) == pytest.approx(1.0)


def test_reference_refuses_too_few_or_bad_scores() -> None:
    with pytest.raises(ContractError):
        score_reference(np.linspace(0, 1, 5))
    with pytest.raises(ContractError):
        score_reference(np.array([np.nan] * 50))


def test_score_reference_model_checks_its_shape() -> None:
    with pytest.raises(ValueError, match="one more bin proportion"):
        ScoreReference(quantiles=[0, 1], bin_edges=[0.5], bin_proportions=[1.0], n_scores=3)
    with pytest.raises(ValueError, match="sum to 1"):
        ScoreReference(quantiles=[0, 1], bin_edges=[0.5], bin_proportions=[0.3, 0.3], n_scores=3)
    with pytest.raises(ValueError, match="must not decrease"):
        ScoreReference(quantiles=[1, 0], bin_edges=[], bin_proportions=[1.0], n_scores=3)


def test_leave_one_out_scores_are_each_rows_distance_to_its_nearest_other() -> None:
    vectors = np.array([[1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)
    scores = leave_one_out_scores(vectors)
    assert scores == pytest.approx([0.2, 0.2, 0.4], abs=1e-6)


def test_calibration_writes_the_reference_and_the_file_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(30, 16))
    embeddings = np.repeat(centres, 4, axis=0) + 0.05 * rng.normal(size=(120, 16))
    labels = [{"group": f"g{i // 4}"} for i in range(120)]
    run = run_calibration(embeddings, labels, model_version="m1", per_cluster="off")
    ref = run.thresholds.score_reference
    assert ref is not None and ref.n_scores > 90  # every known item, the held-out novel groups left out
    assert run.summary["score_reference"]["available"] is True
    path = save_thresholds(tmp_path / "t.json", run.thresholds)
    assert load_thresholds(path).score_reference == ref


def test_an_older_thresholds_file_without_a_reference_still_loads(tmp_path: Path) -> None:
    older = ThresholdsFile(model_version="m0", global_threshold=0.1, method="f1_smooth").model_dump(
        mode="json"
    )
    older.pop("score_reference")
    path = tmp_path / "old.json"
    path.write_text(json.dumps(older))
    assert load_thresholds(path).score_reference is None
    older["score_reference"] = {"quantiles": [0, 1], "bin_edges": [], "bin_proportions": [0.5], "n_scores": 2}
    path.write_text(json.dumps(older))
    with pytest.raises(ConfigError, match="score_reference"):
        load_thresholds(path)


# --------------------------------------------------------------------------- the statistics


def test_no_drift_on_the_calibration_distribution_itself(reference: ScoreReference) -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):  # fresh windows of 500 from the same process
        window = known_scores(rng, 500)
        assert population_stability_index(reference, window) < 0.06
        assert ks_distance(reference, window) < 1.95 * np.sqrt(1 / 500 + 1 / reference.n_scores)  # p 0.001


def test_drift_on_a_shifted_distribution(reference: ScoreReference) -> None:
    rng = np.random.default_rng(8)
    shifted = known_scores(rng, 500, shift=0.01)  # every score up by about one median
    assert population_stability_index(reference, shifted) > RULE_PSI
    assert ks_distance(reference, shifted) > 0.4
    wider = known_scores(rng, 500, scale=2.0)  # same process, twice the spread (defocus blurs prints)
    assert population_stability_index(reference, wider) > RULE_PSI
    lower = known_scores(rng, 500, scale=0.3)  # a collapsing encoder: everything looks known
    assert population_stability_index(reference, lower) > RULE_PSI


def test_drift_grows_with_the_share_of_shifted_scores(reference: ScoreReference) -> None:
    rng = np.random.default_rng(9)
    readings = []
    for share in (0.0, 0.1, 0.3, 0.6, 1.0):
        n_shifted = int(500 * share)
        window = np.concatenate(
            [known_scores(rng, 500 - n_shifted), known_scores(rng, n_shifted, shift=0.02)]
        )
        readings.append(population_stability_index(reference, window))
    assert readings == sorted(readings)
    assert readings[0] < 0.06 < RULE_PSI < readings[2]


def test_psi_and_ks_known_answers() -> None:
    ref = ScoreReference(quantiles=[0.0, 0.5, 1.0], bin_edges=[0.5], bin_proportions=[0.5, 0.5], n_scores=100)
    assert bin_shares(ref, [0.1, 0.2, 0.7, 0.5]).tolist() == [0.5, 0.5]  # an edge belongs to the bin above
    assert population_stability_index(ref, [0.1, 0.9]) == pytest.approx(0.0)
    expected = (0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(0.1 / 0.5)
    assert population_stability_index(ref, [0.1] * 9 + [0.9]) == pytest.approx(expected)
    assert reference_cdf(ref, np.array([-1.0, 0.25, 0.5, 2.0])).tolist() == [0.0, 0.25, 0.5, 1.0]
    assert ks_distance(ref, [2.0, 3.0]) == pytest.approx(1.0)  # everything above the reference
    assert ks_distance(ref, np.linspace(0, 1, 1001)) < 0.002


def test_ks_of_tied_reference_quantiles() -> None:
    ref = ScoreReference(
        quantiles=[0.0, 0.0, 0.0, 0.5, 1.0], bin_edges=[0.25], bin_proportions=[0.6, 0.4], n_scores=100
    )
    assert reference_cdf(ref, np.array([0.0]))[0] == pytest.approx(0.5)  # the tie's top probability
    assert ks_distance(ref, [0.0] * 5 + [0.25, 0.5, 0.75, 1.0, 1.0]) <= 0.25


# --------------------------------------------------------------------------- the sliding windows


def test_window_reads_only_when_full_and_slides(reference: ScoreReference) -> None:
    rng = np.random.default_rng(11)
    drift = ScoreDrift(200, lambda _version: reference)
    for score in known_scores(rng, 199):
        drift.observe("m1", score)
    assert drift.readings() == {"m1": None}
    drift.observe("m1", 0.01)
    quiet = drift.readings()["m1"]
    assert quiet is not None and quiet.n_scores == 200 and quiet.psi < RULE_PSI
    for score in known_scores(rng, 200, shift=0.02):  # the process shifts: the window fills with it
        drift.observe("m1", score)
    shifted = drift.readings()["m1"]
    assert shifted is not None and shifted.n_scores == 200 and shifted.psi > RULE_PSI and shifted.ks > 0.5
    for score in known_scores(rng, 200):  # and back
        drift.observe("m1", score)
    back = drift.readings()["m1"]
    assert back is not None and back.psi < RULE_PSI


def test_windows_per_model_and_a_model_that_stops_is_forgotten(reference: ScoreReference) -> None:
    rng = np.random.default_rng(12)
    drift = ScoreDrift(50, lambda _version: reference)
    for score in known_scores(rng, 50, shift=0.05):
        drift.observe("old", score)
    for score in known_scores(rng, 49):
        drift.observe("new", score)
    readings = drift.readings()
    old = readings["old"]
    assert old is not None and old.psi > RULE_PSI and readings["new"] is None
    drift.observe("new", 0.01)  # a whole window of the new model since the old one's last score
    readings = drift.readings()
    assert set(readings) == {"new"}
    new = readings["new"]
    assert new is not None and new.psi < RULE_PSI


def test_a_model_without_reference_gets_no_reading_and_is_reported_once() -> None:
    missing: list[str] = []
    drift = ScoreDrift(20, lambda _version: None, missing.append)
    for _ in range(3):
        for score in np.linspace(0, 0.02, 20):
            drift.observe("m0", score)
        assert drift.readings() == {"m0": None}
    assert missing == ["m0"]


def test_window_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ScoreDrift(0, lambda _version: None)


# --------------------------------------------------------------------------- the gauge


def gauge(model_version: str, statistic: str) -> float | None:
    return REGISTRY.get_sample_value(
        "lithowatch_novelty_drift", {"model_version": model_version, "statistic": statistic}
    )


def test_export_sets_a_series_per_statistic_and_removes_it_without_reading(
    reference: ScoreReference, caplog: pytest.LogCaptureFixture
) -> None:
    refs: dict[str, ScoreReference | None] = {"gauge-test": reference}
    drift = ScoreDrift(20, lambda version: refs.get(version))
    for score in known_scores(np.random.default_rng(13), 20, shift=0.05):
        drift.observe("gauge-test", score)
    export_drift(drift)
    psi, ks = gauge("gauge-test", "psi"), gauge("gauge-test", "ks")
    assert psi is not None and psi > RULE_PSI and ks is not None and ks > 0.5
    refs["gauge-test"] = None  # thresholds replaced by a file without a reference
    with caplog.at_level(logging.WARNING):
        export_drift(drift)
    assert gauge("gauge-test", "psi") is None and gauge("gauge-test", "ks") is None


def test_the_stage_observes_every_scored_result_and_feeds_the_drift_watch(reference: ScoreReference) -> None:
    from test_novelty_core import near, result, with_library

    from services.novelty.stage import NoveltyStage

    replica = with_library(threshold=0.2)
    seen: list[tuple[str, float]] = []

    class Recording(ScoreDrift):
        def observe(self, model_version: str, novelty_score: float) -> None:
            seen.append((model_version, novelty_score))
            super().observe(model_version, novelty_score)

    stage = NoveltyStage(replica.core, drift=Recording(2, lambda _version: reference))
    rng = np.random.default_rng(14)
    batch = [result("drift-known", near(0, rng)), result("drift-novel", near(20, rng))]
    model = batch[0].model_version
    count = {"lithowatch_novelty_score_count", "lithowatch_novelty_neighbour_similarity_count"}
    before = {name: REGISTRY.get_sample_value(name, {"model_version": model}) or 0.0 for name in count}
    outcomes = stage.process_batch(batch)
    scores = [out[0].value.novelty_score for out in outcomes]  # type: ignore[index,union-attr]
    assert seen == [(model, scores[0]), (model, scores[1])]
    for name in count:
        assert REGISTRY.get_sample_value(name, {"model_version": model}) == before[name] + 2
    assert gauge(model, "psi") is not None  # a full window of 2: read and exported with the batch
