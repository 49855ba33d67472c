"""What ``lithowatch up`` scores against: a reference library and thresholds, set up before the services.

- ``--library DIR`` (a data set folder): embedded with the live model and published, then
  thresholds calibrated on it unless ``LITHOWATCH_THRESHOLDS_PATH`` names some;
- a library topic that already holds entries (an external broker): used as it is;
- neither: the default library, the demo's known families (generated once and cached), so
  that a first ``lithowatch up`` with no settings scores results instead of holding them;
- ``--no-library``: nothing; novelty holds results until a library is published.

Every choice is said on the console, with how to change it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared.contracts import Topics
from shared.errors import LithowatchError
from shared.settings import CommonSettings

Say = Callable[[str], None]


class UpSettings(CommonSettings):
    """The embed and novelty settings ``up`` needs to know before it starts them."""

    model_path: Path | None = None
    thresholds_path: Path | None = None


@dataclass
class LibraryPlan:
    """What novelty will read: the entries published (if any) and the settings to start it with."""

    source: str
    entries: int = 0
    service_env: dict[str, str] = field(default_factory=dict)


def library_records(settings: CommonSettings) -> int:
    """How many records the library topic holds (end offsets summed; 0 when it is empty or absent)."""
    from kafka import TopicPartition

    from shared.kafka_io import make_reader

    consumer = make_reader(settings)
    try:
        parts = consumer.partitions_for_topic(Topics.LIBRARY) or set()
        ends = consumer.end_offsets([TopicPartition(Topics.LIBRARY, p) for p in parts])
        return int(sum(ends.values()))
    finally:
        consumer.close()


def plan_library(
    settings: UpSettings, library: Path | None, no_library: bool, workdir: Path, say: Say
) -> LibraryPlan:
    """Publish the library ``up`` should score against and calibrate its thresholds (see module doc)."""
    if no_library:
        say(
            "library: none (--no-library); novelty holds every result until a library is published "
            "(lithowatch library build DATASET)"
        )
        return LibraryPlan("none")
    if library is None:
        existing = library_records(settings)
        if existing:
            say(f"library: {existing} records already on {Topics.LIBRARY}; using them")
            return LibraryPlan("topic", existing)
        from app.demo.assets import default_library

        say(
            "library: none given and the library topic is empty; using the default library "
            "(generated layouts of 5 known families; --library DATASET for your own, --no-library for none)"
        )
        dataset = default_library(say)
        source = "default"
    else:
        if not (library / "manifest.jsonl").is_file():
            raise LithowatchError(f"--library {library}: not a data set folder (no manifest.jsonl)")
        dataset, source = library, str(library)
    from services.novelty.library_cli import build_library
    from shared.model.default import default_model_path

    model_dir = settings.model_path or default_model_path()
    count = build_library(settings, dataset, model_dir)
    say(f"library: {count} reference entries from {dataset} embedded with {model_dir.name} and published")
    plan = LibraryPlan(source, count)
    if settings.thresholds_path is not None:
        say(f"thresholds: {settings.thresholds_path} (LITHOWATCH_THRESHOLDS_PATH)")
        return plan
    from app.demo.assets import calibrate

    try:
        thresholds, _report = calibrate(dataset, model_dir, workdir, say)
    except LithowatchError as exc:
        say(f"thresholds: could not calibrate on {dataset} ({exc}); novelty uses its default threshold")
        return plan
    plan.service_env["LITHOWATCH_THRESHOLDS_PATH"] = str(thresholds)
    return plan
