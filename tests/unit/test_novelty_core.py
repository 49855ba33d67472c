"""The novelty core's verdicts that do not need a library (pure logic, no broker)."""

from __future__ import annotations

from typing import Any

import pytest

from services.novelty.core import NoveltyCore
from shared.errors import TransientError


def test_an_empty_library_makes_results_wait_instead_of_dead_lettering_them() -> None:
    core = NoveltyCore(lambda: None, lambda: None)  # type: ignore[arg-type,return-value]
    item: Any = object()  # never looked at: the library is checked first
    with pytest.raises(TransientError, match="library is empty"):
        core.score(item)
