"""Score drift end to end: a farm whose process shifts (defocus added) drives the drift statistic
of the running novelty service past its rule threshold, and a real Prometheus fires
LithowatchNoveltyScoreDrift.

The set-up, all real but the encoder's training (the untrained ResNet-18 of the quick demo):
- a labelled data set from the farm emulator: LAYOUTS layouts of the known families, VARIANTS
  results each (random shift, dose, focus, bias); ``calibrate``'s recipe writes the thresholds
  file with its score reference (every result scored against the others, leave one out);
- the library: VARIANTS - 1 results of each layout, so that a new result of a known layout
  finds as many results of its layout in the library as a calibration result found among the
  others. With all of them in the library a new result is a little nearer its layout than
  calibration expected; over windows of 500 scores that measured PSI 0.08-0.12 against
  0.07-0.11 (the same streams against VARIANTS - 1), but this test's shorter window (WINDOW)
  has less room for it under the rule's thresholds;
- the stream: new results of the same layouts from the same farm, WINDOW of them as usual
  (steady), then WINDOW with DEFOCUS_NM of defocus on every result (the shift), embedded by the
  encoder (the embed stage's job, done here so that only the novelty stage runs) and produced
  to the embedded topic of a real broker;
- the novelty service as a process on its default metrics port, with a drift window of WINDOW
  scores, and ``prometheus`` (Debian package) scraping it per prometheus.local.yml with the
  production rules; only the drift alert's ``for: 15m`` is shortened (FOR_DURATION), as the
  observability test does for the novelty alert.

It checks: after the steady stream the drift gauge exists and the alert's condition is false
(and the alert inactive); after the defocused stream PSI and KS are past the rule's thresholds
and the alert reaches ``firing``. The figures are printed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_harness import RULES_DIR, Prometheus, say, shorten_rules, wait_for

from app.launcher import EmbeddedStack
from app.supervisor import Pipeline, port_is_free
from shared.contracts import Topics
from shared.dataset import DatasetWriter, read_dataset
from shared.index.thresholds import load_thresholds, save_thresholds
from shared.settings import DEFAULT_METRICS_PORTS
from shared.testing import collect, embedded_result, library_entry, produce

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DRIFT_ALERT = "LithowatchNoveltyScoreDrift"
FOR_DURATION = "5s"
PSI_RULE, KS_RULE = 0.25, 0.2  # the alert's thresholds in deploy/prometheus/rules/lithowatch.rules.yml
LAYOUTS_PER_FAMILY = 8
VARIANTS = 6
WINDOW = 200
DEFOCUS_NM = 200.0
SEED = 7


@dataclass
class DriftAssets:
    thresholds_path: Path
    model_version: str
    library: list  # LibraryEntry
    steady: list  # EmbeddedResult
    defocused: list  # EmbeddedResult


@pytest.fixture(scope="module")
def drift_assets(tmp_path_factory: pytest.TempPathFactory) -> DriftAssets:
    from app.demo.assets import KNOWN_FAMILIES, DemoConfig, prepare_model
    from shared.model import embed_dataset, load_encoder
    from toolkit.calibration.recipe import run_calibration
    from toolkit.litho import FarmGenerator

    root = tmp_path_factory.mktemp("drift-assets")
    model_dir = prepare_model(replace(DemoConfig.quick(), model="untrained", seed=SEED), root, root, say)
    encoder = load_encoder(model_dir, device="cpu")
    farm = FarmGenerator(seed=SEED, families=KNOWN_FAMILIES)
    layouts = []
    with DatasetWriter(root / "labelled") as writer:
        for family in KNOWN_FAMILIES:
            for _ in range(LAYOUTS_PER_FAMILY):
                layout = farm.new_layout(family)
                group = farm.group_id(layout)
                layouts.append((layout, group))
                for v in range(VARIANTS):
                    s = farm.render(layout, group, farm.random_variant(max_shift_px=8))
                    writer.add(s.id, s.mask, s.simulated, s.nm_per_px, {**s.labels, "variant": v})
    labelled = read_dataset(root / "labelled")
    vectors = np.asarray(embed_dataset(labelled, encoder), dtype=np.float32)
    labels = [dict(item.labels) for item in labelled.items]
    run = run_calibration(vectors, labels, model_version=encoder.model_version, seed=SEED)
    assert run.thresholds.score_reference is not None
    thresholds_path = save_thresholds(root / "thresholds.json", run.thresholds)
    say(
        f"calibrated: threshold {run.thresholds.global_threshold:.4f}, "
        f"reference {run.summary['score_reference']}"
    )
    library = [
        library_entry(item.id, vector, encoder.model_version, dict(item.labels))
        for item, vector in zip(labelled.items, vectors, strict=True)
        if int(item.labels["variant"]) < VARIANTS - 1  # type: ignore[arg-type]
    ]
    rng = np.random.default_rng(SEED)

    def stream(name: str, defocus_nm: float | None) -> list:
        with DatasetWriter(root / name) as writer:
            for k in range(WINDOW):
                layout, group = layouts[int(rng.integers(len(layouts)))]
                variant = farm.random_variant(max_shift_px=8)
                if defocus_nm is not None:
                    variant = replace(variant, defocus_nm=defocus_nm)
                s = farm.render(layout, group, variant)
                writer.add(f"{name}-{k:04d}", s.mask, s.simulated, s.nm_per_px, dict(s.labels))
        data = read_dataset(root / name)
        embedded = np.asarray(embed_dataset(data, encoder), dtype=np.float32)
        return [
            embedded_result(item.id, vector, encoder.model_version, {"defocus_nm": item.labels["defocus_nm"]})
            for item, vector in zip(data.items, embedded, strict=True)
        ]

    steady, defocused = stream("steady", None), stream("defocused", DEFOCUS_NM)
    assert load_thresholds(thresholds_path).model_version == encoder.model_version
    return DriftAssets(thresholds_path, encoder.model_version, library, steady, defocused)


@pytest.fixture
def watched(
    stack: EmbeddedStack, drift_assets: DriftAssets, tmp_path: Path
) -> Iterator[tuple[Pipeline, Prometheus]]:
    port = DEFAULT_METRICS_PORTS["novelty"]
    if not port_is_free(port):
        pytest.fail(f"novelty's default metrics port {port} is taken: prometheus.local.yml scrapes it there")
    produce(stack.bootstrap, Topics.LIBRARY, drift_assets.library)
    rules = shorten_rules(
        yaml.safe_load((RULES_DIR / "lithowatch.rules.yml").read_text()), {DRIFT_ALERT}, FOR_DURATION, "30s"
    )
    prom = Prometheus(tmp_path / "prometheus", rules)
    pipeline = Pipeline(
        stack,
        service_env={
            "LITHOWATCH_THRESHOLDS_PATH": str(drift_assets.thresholds_path),
            "LITHOWATCH_NOVELTY_DRIFT_WINDOW": str(WINDOW),
            "LITHOWATCH_SNAPSHOT_DIR": str(tmp_path / "snapshots"),
            "LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000",
            "LITHOWATCH_SESSION_TIMEOUT_MS": "6000",
        },
        default_ports=True,
    )
    try:
        prom.start()
        pipeline.start_service("novelty")
        pipeline.wait_ready(120)
        yield pipeline, prom
    finally:
        pipeline.stop()
        prom.stop()


def drift(prom: Prometheus) -> dict[str, float]:
    return {
        series["metric"]["statistic"]: float(series["value"][1])
        for series in prom.query('lithowatch:novelty_drift:max{model_version!=""}')
    }


def alert_state(prom: Prometheus) -> str:
    states = [a["state"] for a in prom.alerts() if a["labels"].get("alertname") == DRIFT_ALERT]
    return states[0] if states else "inactive"


def scored(stack: EmbeddedStack, count: int) -> None:
    collect(
        stack.bootstrap,
        [Topics.SCORES],
        lambda records: len({r.key for r in records}) >= count,
        timeout_seconds=180,
    )


def test_defocus_drives_the_drift_alert(
    stack: EmbeddedStack, watched: tuple[Pipeline, Prometheus], drift_assets: DriftAssets
) -> None:
    _, prom = watched
    produce(stack.bootstrap, Topics.EMBEDDED, drift_assets.steady)
    scored(stack, WINDOW)
    wait_for("the drift gauge of a full window", lambda: len(drift(prom)) == 2, 60)
    time.sleep(6)  # past the shortened for: a true condition would be firing by now
    steady = drift(prom)
    state = alert_state(prom)
    say(f"steady stream: psi {steady['psi']:.3f} ks {steady['ks']:.3f}, alert {state}")
    assert not (steady["psi"] > PSI_RULE and steady["ks"] > KS_RULE), steady
    assert state == "inactive"

    produce(stack.bootstrap, Topics.EMBEDDED, drift_assets.defocused)
    scored(stack, 2 * WINDOW)

    def shifted() -> bool:
        now = drift(prom)
        return now.get("psi", 0.0) > PSI_RULE and now.get("ks", 0.0) > KS_RULE

    wait_for("the drift statistics past the rule's thresholds", shifted, 60)
    wait_for(f"{DRIFT_ALERT} firing", lambda: alert_state(prom) == "firing", 60)
    after = drift(prom)
    (alert,) = [a for a in prom.alerts() if a["labels"].get("alertname") == DRIFT_ALERT]
    say(
        f"defocus {DEFOCUS_NM:.0f} nm: psi {after['psi']:.3f} ks {after['ks']:.3f}, alert firing "
        f"for model {alert['labels']['model_version']}"
    )
    assert alert["labels"]["model_version"] == drift_assets.model_version
    assert after["psi"] > steady["psi"] and after["ks"] > steady["ks"]
