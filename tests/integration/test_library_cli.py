"""`lithowatch library promote|drop|list` read and write the library topic (last record per id wins)."""

from __future__ import annotations

import numpy as np
import pytest

from app.cli import main
from app.launcher import EmbeddedStack
from services.novelty.library_cli import read_library
from shared.contracts import Topics
from shared.kafka_io import read_to_end
from shared.settings import CommonSettings
from shared.testing import library_entry, produce

pytestmark = pytest.mark.integration


def test_promote_and_drop(stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    entries = [library_entry(f"e{i}", rng.standard_normal(8)) for i in range(3)]
    entries[2] = entries[2].model_copy(update={"status": "provisional", "alert_id": "alert-e2"})
    produce(stack.bootstrap, Topics.LIBRARY, entries)
    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    assert main(["library", "promote", "e2"]) == 0
    assert main(["library", "drop", "e0"]) == 0
    assert main(["library", "drop", "missing"]) == 2
    settings = CommonSettings(kafka_bootstrap=stack.bootstrap)
    latest = read_library(settings)
    assert "e0" not in latest  # dropped
    last_e0 = [r for r in read_to_end(settings, Topics.LIBRARY) if r.key == b"e0"][-1]
    assert last_e0.value is None  # a real tombstone: compaction removes the entry for good
    assert main(["library", "drop", "e0"]) == 2  # gone: nothing left to drop
    assert latest["e2"][0].status == "reference" and latest["e2"][0].alert_id == "alert-e2"
    assert latest["e1"][0].status == "reference"


def test_provisional_entries_are_addressed_by_entry_id_or_result_id(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    novel = [
        library_entry(f"provisional/r{i}", rng.standard_normal(8)).model_copy(
            update={"status": "provisional", "alert_id": f"alert-r{i}"}
        )
        for i in range(3)
    ]
    produce(stack.bootstrap, Topics.LIBRARY, [library_entry("r0", rng.standard_normal(8)), *novel])
    monkeypatch.setenv("LITHOWATCH_KAFKA_BOOTSTRAP", stack.bootstrap)
    assert main(["library", "promote", "r1"]) == 0  # the result id of a provisional entry
    assert main(["library", "drop", "provisional/r2"]) == 0  # its entry id
    assert main(["library", "drop", "r0"]) == 0  # a reference entry's own id comes first
    latest = read_library(CommonSettings(kafka_bootstrap=stack.bootstrap))
    assert latest["provisional/r1"][0].status == "reference"
    assert "provisional/r2" not in latest  # dropped (tombstones)
    assert "r0" not in latest and latest["provisional/r0"][0].op == "upsert"
