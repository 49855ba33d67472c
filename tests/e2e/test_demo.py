"""`lithowatch demo` in its short mode: finds the held-out family and writes a page whose links resolve."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from app.launcher import ChildProcess

pytestmark = pytest.mark.e2e


def test_quick_demo_finds_the_held_out_family(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    demo = ChildProcess(
        "demo",
        [
            sys.executable,
            "-m",
            "app.cli",
            "demo",
            "--quick",
            "--exit",
            "--workdir",
            str(workdir),
            "--timeout",
            "300",
        ],
        tmp_path / "demo.log",
    )
    demo.start()
    try:
        assert demo.proc is not None
        code = demo.proc.wait(timeout=600)
    finally:
        demo.stop()
    assert code == 0, demo.log_tail(60)
    summary = json.loads((workdir / "report" / "summary.json").read_text())
    assert summary["accounted"] == summary["results"]
    assert summary["held_out_family_found"]
    assert summary["alerts"] >= 1 and summary["explanations"] == summary["alerts"]
    page = workdir / "report" / "alerts.html"
    links = set(re.findall(r"(?:href|src)='([^']+)'", page.read_text()))
    assert links, "the alerts page links no panel"
    for link in links:
        target = (page.parent / link).resolve()
        assert target.is_file() and target.read_bytes().startswith(b"\x89PNG"), link
    assert (workdir / "calibration-report" / "index.html").is_file()
