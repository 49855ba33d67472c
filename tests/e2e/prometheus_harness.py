"""A real Prometheus for tests: config and rules copied into a temporary folder, HTTP API helpers.

The production files under deploy/prometheus/ are never changed: the test copy of the rules
shortens the novelty alert's ``for:`` duration and the novelty rules' 10-minute window so that an
alert can fire within a test run (see :func:`shorten_rules`).
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.launcher import ChildProcess, free_port

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
LOCAL_CONFIG = PROM_DIR / "prometheus.local.yml"
RULES_DIR = PROM_DIR / "rules"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "lithowatch-pipeline.json"

# Windows of the "what is happening now" novelty rules (production: 10m); the 1-day baseline is
# kept: in a test it covers the whole run, which is what a baseline is.
NOVELTY_SHORT_RULES = ("lithowatch:novelty_ratio:rate10m", "lithowatch:novelty_decisions:rate10m")


def say(message: str) -> None:
    """A progress line with the time (these tests run for minutes; ``-s`` shows them)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_for(what: str, predicate: Callable[[], bool], timeout_seconds: float, interval: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        time.sleep(interval)


def shorten_rules(
    rules: dict[str, Any], alerts: Collection[str], for_duration: str, novelty_window: str
) -> dict[str, Any]:
    """A copy of a rules document for tests: the ``for:`` of the named alerts set to
    ``for_duration`` and the short novelty windows (``[10m]``) set to ``novelty_window``;
    everything else (names, expressions, thresholds, other alerts) unchanged."""
    copy: dict[str, Any] = json.loads(json.dumps(rules))
    found: set[str] = set()
    for group in copy["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in alerts:
                found.add(rule["alert"])
                if "for" in rule:
                    rule["for"] = for_duration
            if rule.get("record") in NOVELTY_SHORT_RULES:
                found.add(rule["record"])
                rule["expr"] = re.sub(r"\[10m\]", f"[{novelty_window}]", rule["expr"])
    missing = (set(alerts) | set(NOVELTY_SHORT_RULES)) - found
    assert not missing, f"rules not found in the rules file: {sorted(missing)}"
    return copy


def panel_queries(dashboard_path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows included."""
    dashboard = json.loads(dashboard_path.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    return [
        (str(panel.get("title", "?")), str(target["expr"]))
        for panel in walk(dashboard["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def instant_query_text(expr: str, window: str = "30s") -> str:
    """Grafana's built-in interval variables become ``window``; template variables match anything."""
    expr = re.sub(r"\$\{?(__rate_interval|__interval|__range)\b\}?", window, expr)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


@dataclass
class Prometheus:
    """``prometheus`` as a child process on a free port, scraping per prometheus.local.yml."""

    workdir: Path
    rules: dict[str, Any]
    process: ChildProcess | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, binary: str = "prometheus") -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        rules_dir = self.workdir / "rules"
        rules_dir.mkdir(exist_ok=True)
        (rules_dir / "lithowatch.rules.yml").write_text(yaml.safe_dump(self.rules, sort_keys=False))
        config = yaml.safe_load(LOCAL_CONFIG.read_text())
        config["rule_files"] = [str(rules_dir / "*.yml")]
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        found = shutil.which(binary)
        assert found, f"{binary} not on PATH (Debian package: prometheus)"
        self.process = ChildProcess(
            "prometheus",
            [
                found,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            self.workdir / "prometheus.log",
        ).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.alive(), f"prometheus exited:\n{self.process.log_tail()}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"prometheus not ready within 60 s:\n{self.process.log_tail()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # a bad query answers 400 with the reason in the body
            raise AssertionError(f"/api/v1/{path} {params}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
        assert body.get("status") == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector result of ``expr`` (an error answer fails the caller's test)."""
        data = self.api("query", query=expr)
        result = data["result"]
        assert isinstance(result, list), data
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts = self.api("alerts")["alerts"]
        assert isinstance(alerts, list)
        return alerts

    def targets_up(self) -> dict[str, bool]:
        """service label -> health of its scrape target."""
        active = self.api("targets")["activeTargets"]
        return {str(t["labels"].get("service")): t["health"] == "up" for t in active}
