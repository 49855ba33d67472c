"""The stage protocol: pure cores load no Kafka client, and the runtime drives ``tick`` and ``close``."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_runtime_policy import FakeConsumer, FakeProducer, ScriptedStage, _good, _run

from shared.runtime import StageRunner
from shared.settings import StageSettings

ROOT = Path(__file__).resolve().parents[2]
CORES = sorted(path.parent.name for path in (ROOT / "services").glob("*/core.py"))


def test_every_service_has_a_core() -> None:
    assert {"dedupe", "align", "embed", "novelty", "explain", "simfarm"} <= set(CORES)


@pytest.mark.parametrize("module", [*(f"services.{name}.core" for name in CORES), "shared.stage"])
def test_importing_a_core_does_not_load_the_kafka_client(module: str) -> None:
    probe = "\n".join(
        [
            "import sys",
            f"import {module}",
            "loaded = [m for m in sys.modules if m.split('.')[0] == 'kafka' or m == 'shared.runtime']",
            "print(','.join(sorted(loaded)))",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} loads {done.stdout.strip()}"


class LifecycleStage(ScriptedStage):
    """Counts the runtime's calls of ``tick`` and ``close``, and the batches between ticks."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def process_batch(self, items):  # type: ignore[no-untyped-def]
        self.events.append("batch")
        return super().process_batch(items)

    def tick(self) -> None:
        self.events.append("tick")

    def close(self) -> None:
        self.events.append("close")


def test_the_runtime_ticks_before_each_poll_and_closes_the_stage_once() -> None:
    stage = LifecycleStage()
    consumer = FakeConsumer([_good(n) for n in range(5)])
    _run(stage, consumer, FakeProducer(), batch_max_messages=2)
    assert stage.events[0] == "tick"
    assert stage.events[-1] == "close" and stage.events.count("close") == 1
    assert stage.events.count("batch") == 3
    assert "batch" not in [b for a, b in zip(stage.events, stage.events[1:], strict=False) if a == "batch"], (
        "a tick runs between two batches"
    )


def test_the_stage_is_closed_even_when_the_shutdown_fails() -> None:
    stage = LifecycleStage()
    consumer = FakeConsumer([_good(0)])

    def broken_close(autocommit: bool = False) -> None:
        raise RuntimeError("consumer close failed")

    consumer.close = broken_close  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="consumer close failed"):
        _run(stage, consumer, FakeProducer())
    assert stage.events[-1] == "close"


def test_the_stage_is_closed_when_the_runner_cannot_start(tmp_path: Path) -> None:
    stage = LifecycleStage()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        settings = StageSettings(
            kafka_bootstrap="unused:1", metrics_port=busy.getsockname()[1], state_dir=tmp_path
        )
        runner = StageRunner(stage, settings, consumer=FakeConsumer([]), producer=FakeProducer())  # type: ignore[arg-type]
        with pytest.raises(OSError):
            runner.run(install_signals=False)  # the metrics port is taken
    assert stage.events == ["close"]
