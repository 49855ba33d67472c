"""Deployment and observability files: compose, Prometheus rules, Grafana, Kubernetes.

Checks that need promtool (Debian package ``prometheus``) fail when it is missing, unless
``LITHOWATCH_ALLOW_NO_PROMTOOL=1`` says to skip them. Nothing here touches the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = REPO / "docker-compose.yml"
GPU_OVERRIDE = DEPLOY / "docker" / "compose.gpu.yml"
COMPOSE_SCHEMA = DEPLOY / "compose-spec.schema.json"
PROM_DIR = DEPLOY / "prometheus"
RULES_FILE = PROM_DIR / "rules" / "lithowatch.rules.yml"
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.test.yml"))
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "lithowatch-pipeline.json"
GRAFANA_DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources"
GRAFANA_DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards"
K8S = DEPLOY / "k8s"
TOPIC_SCRIPT = DEPLOY / "kafka" / "create-topics.sh"
RUNBOOK = DEPLOY / "RUNBOOK.md"

STAGES = ("dedupe", "align", "embed", "novelty", "explain")
METRICS_PORTS = {
    "dedupe": 9101,
    "align": 9102,
    "embed": 9103,
    "novelty": 9104,
    "explain": 9105,
    "simfarm": 9106,
}
REQUIRED_COMPOSE_VARIABLES = {"REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
TEST_ENV = {"REDIS_PASSWORD": "testpassword1", "GRAFANA_ADMIN_PASSWORD": "testpassword2"}

# The metrics the services export (name -> type); histograms also expose _bucket/_sum/_count.
SERVICE_METRICS = {
    "lithowatch_stage_latency_seconds": "histogram",
    "lithowatch_end_to_end_latency_seconds": "histogram",
    "lithowatch_messages_total": "counter",
    "lithowatch_batch_size": "histogram",
    "lithowatch_dlq_total": "counter",
    "lithowatch_consumer_lag": "gauge",
    "lithowatch_stage_up": "gauge",
    "lithowatch_duplicates_total": "counter",
    "lithowatch_novelty_decisions_total": "counter",
    "lithowatch_alerts_total": "counter",
    "lithowatch_index_size": "gauge",
    "lithowatch_library_provisional": "gauge",
    "lithowatch_embed_images_per_second": "gauge",
    "lithowatch_embed_busy_ratio": "gauge",
    "lithowatch_embed_device_info": "gauge",
    "lithowatch_confirmations_total": "counter",
    "lithowatch_farm_results_total": "counter",
    "lithowatch_dedupe_band_members_trimmed_total": "counter",
    "lithowatch_blobs_removed_total": "counter",
    "lithowatch_library_events_total": "counter",
    "lithowatch_model_info": "gauge",
    "lithowatch_thresholds_info": "gauge",
    "lithowatch_novelty_score": "histogram",
    "lithowatch_novelty_neighbour_similarity": "histogram",
    "lithowatch_novelty_drift": "gauge",
}
# Series from elsewhere that the rules may read: Prometheus itself and the Kafka lag exporter.
EXTERNAL_METRICS = {"up", "ALERTS", "kafka_consumergroup_lag"}

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "atan2",
    "Inf",
    "NaN",
    "inf",
    "nan",
}


# --------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def exposed_series_names() -> set[str]:
    names: set[str] = set()
    for name, kind in SERVICE_METRICS.items():
        names.add(name)
        if kind == "histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names


def recording_rule_names() -> set[str]:
    return {
        rule["record"]
        for group in load_yaml(RULES_FILE)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES_FILE)["groups"] for rule in group["rules"] if "alert" in rule]


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (good enough for the expressions kept here)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", "", text)
    names: set[str] = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        before = text[match.start() - 1] if match.start() > 0 else " "
        if before.isdigit() or before == ".":
            continue  # exponent of a number such as 1e-9
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function call
        if match.group(0) in PROMQL_KEYWORDS:
            continue
        names.add(match.group(0))
    return names


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    """A `${VAR:?message}` variable is unset."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style variable interpolation over a parsed YAML tree."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        unset_or_empty = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty else str(current)
        if op in (":?", "?"):
            if unset_or_empty:
                raise MissingVariable(f"{name}: {arg}")
            return str(current)
        return current or ""

    return _INTERPOLATION.sub(substitute, value)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(load_yaml(COMPOSE_FILE), TEST_ENV if env is None else env)  # type: ignore[no-any-return]


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_expressions() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    found = [
        (panel.get("title", "?"), target["expr"])
        for panel in dashboard_panels(board["panels"])
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    found += [(f"annotation {a['name']}", a["expr"]) for a in board["annotations"]["list"] if "expr" in a]
    return found


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(K8S.rglob("*.yaml")) for doc in load_yaml_documents(path)]


def deployments() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_documents() if doc.get("kind") == "Deployment"}


# --------------------------------------------------------------------------- promtool


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("LITHOWATCH_ALLOW_NO_PROMTOOL") == "1":
            pytest.skip("promtool is not installed (LITHOWATCH_ALLOW_NO_PROMTOOL=1)")
        pytest.fail(
            "promtool is not installed: `apt-get install -y prometheus` (Debian) provides it; "
            "set LITHOWATCH_ALLOW_NO_PROMTOOL=1 to skip the promtool checks knowingly",
            pytrace=False,
        )
    return path


def run_promtool(promtool: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_pass_promtool_check(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    assert RULE_TESTS, "no promtool unit tests found"
    result = run_promtool(promtool, "test", "rules", *(p.name for p in RULE_TESTS), cwd=PROM_DIR / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_prometheus_configs_pass_promtool_check(promtool: str, config: str) -> None:
    result = run_promtool(promtool, "check", "config", str(PROM_DIR / config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules found" in result.stdout, "the rule files were not loaded: " + result.stdout


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    expressions = dashboard_expressions()
    assert expressions
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(expressions)
                ],
            }
        ]
    }
    rules_file = tmp_path / "dashboard.rules.yml"
    rules_file.write_text(yaml.safe_dump(rules))
    result = run_promtool(promtool, "check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- alert rules


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        spec = load_yaml(path)
        assert spec["rule_files"] == ["../rules/lithowatch.rules.yml"], path.name
        for test in spec["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts - firing == set(), "alerts without a firing test"
    assert alerts - quiet == set(), "alerts without a not-firing test"
    assert (firing | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_alerts_are_documented_in_the_runbook() -> None:
    runbook = RUNBOOK.read_text()
    headings = {
        re.sub(r"[^a-z0-9_-]", "", line[3:].strip().lower())
        for line in runbook.splitlines()
        if line.startswith("## ")
    }
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == name.lower(), name
        assert anchor in headings, f"deploy/RUNBOOK.md has no section '## {name}'"


def test_rules_read_only_known_metrics() -> None:
    allowed = exposed_series_names() | recording_rule_names() | EXTERNAL_METRICS
    for group in load_yaml(RULES_FILE)["groups"]:
        for rule in group["rules"]:
            unknown = promql_metric_names(rule["expr"]) - allowed
            assert not unknown, f"{rule.get('record') or rule.get('alert')}: unknown metrics {unknown}"


def test_service_metrics_are_the_ones_the_services_define() -> None:
    source = (REPO / "shared" / "metrics.py").read_text()
    defined = set(re.findall(r'"(lithowatch_[a-z_]+)"', source))
    assert set(SERVICE_METRICS) <= defined, (
        f"not defined in shared/metrics.py: {set(SERVICE_METRICS) - defined}"
    )


def test_promql_metric_name_extraction() -> None:
    expr = (
        'sum by (stage, le) (rate(lithowatch_x_bucket{stage="a b", le=~"1e-3|+Inf"}[5m])) > 1e-9 '
        'and on () ALERTS unless foo offset 5m or label_replace(bar, "s", "$1", "g", "(.+)")'
    )
    assert promql_metric_names(expr) == {"lithowatch_x_bucket", "ALERTS", "foo", "bar"}


def test_prometheus_rule_for_the_operator_matches_the_rules_file() -> None:
    rule = load_yaml(K8S / "monitoring" / "prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == load_yaml(RULES_FILE)["groups"], (
        "regenerate: python deploy/k8s/monitoring/generate_prometheusrule.py"
    )


# --------------------------------------------------------------------------- Prometheus configs


def scrape_targets(config: dict[str, Any], job: str) -> dict[str, int]:
    """service label -> port, from static or DNS service discovery of one job."""
    (scrape,) = [c for c in config["scrape_configs"] if c["job_name"] == job]
    found: dict[str, int] = {}
    for static in scrape.get("static_configs", []):
        for target in static["targets"]:
            found[static["labels"]["service"]] = int(target.rsplit(":", 1)[1])
    for dns in scrape.get("dns_sd_configs", []):
        for name in dns["names"]:
            found[name] = int(dns["port"])
    return found


def test_compose_prometheus_scrapes_every_service_and_the_lag_exporter() -> None:
    config = load_yaml(PROM_DIR / "prometheus.yml")
    assert scrape_targets(config, "lithowatch") == METRICS_PORTS
    relabel = config["scrape_configs"][0]["relabel_configs"]
    assert {"source_labels": ["__meta_dns_name"], "target_label": "service"} in relabel
    assert scrape_targets(config, "kafka-exporter") == {"kafka-exporter": 9308}
    assert config["rule_files"] == ["rules/*.yml"]


def test_local_prometheus_fits_lithowatch_up() -> None:
    config = load_yaml(PROM_DIR / "prometheus.local.yml")
    interval = config["global"]["scrape_interval"]
    assert interval in {"1s", "2s"}
    assert config["global"]["evaluation_interval"] in {"1s", "2s"}
    assert config["rule_files"] == ["rules/*.yml"]
    assert (PROM_DIR / "rules").is_dir()
    (scrape,) = config["scrape_configs"]
    hosts = {target.rsplit(":", 1)[0] for static in scrape["static_configs"] for target in static["targets"]}
    assert hosts == {"127.0.0.1"}
    assert scrape_targets(config, "lithowatch") == METRICS_PORTS


def test_metrics_ports_match_the_settings_defaults() -> None:
    settings = (REPO / "shared" / "settings.py").read_text()
    for service, port in METRICS_PORTS.items():
        assert re.search(rf'"{service}":\s*{port}\b', settings), (
            f"{service}: {port} not in shared/settings.py"
        )


# --------------------------------------------------------------------------- docker compose


def test_compose_file_validates_against_the_compose_specification() -> None:
    validator = compose_validator()
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_gpu_override_validates_and_reserves_a_gpu() -> None:
    override = interpolate(load_yaml(GPU_OVERRIDE), TEST_ENV)
    errors = list(compose_validator().iter_errors(override))
    assert not errors, [e.message for e in errors]
    embed = override["services"]["embed"]
    assert embed["build"]["dockerfile"] == "deploy/docker/Dockerfile.cuda"
    (device,) = embed["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == 1


def test_the_schema_rejects_a_broken_compose_file() -> None:
    broken = compose()
    broken["services"]["dedupe"]["healthcheck"]["interval_seconds"] = 10
    broken["services"]["align"]["depends_on"]["kafka"]["condition"] = "service_ready"
    assert len(list(compose_validator().iter_errors(broken))) == 2


@pytest.mark.parametrize("missing", sorted(REQUIRED_COMPOSE_VARIABLES))
def test_compose_refuses_to_start_without_required_variables(missing: str) -> None:
    env = {k: v for k, v in TEST_ENV.items() if k != missing}
    with pytest.raises(MissingVariable, match=missing):
        compose(env)
    raw = COMPOSE_FILE.read_text()
    for use in re.findall(rf"\$\{{{missing}[^}}]*\}}", raw):
        assert use.startswith(f"${{{missing}:?"), f"{use}: required variables use ${{VAR:?message}}"


def test_interpolation_rules() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("${A}-${B:-x}-${EMPTY:-y}-${EMPTY-z}-$$A-$A", env) == "1-x-y--$A-1"
    with pytest.raises(MissingVariable, match="EMPTY: no"):
        interpolate("${EMPTY:?no}", env)


def test_every_compose_service_has_a_healthcheck_and_ordered_start() -> None:
    services = compose()["services"]
    one_shots = {name for name, svc in services.items() if svc.get("restart") == "no"}
    assert one_shots == {"topic-init"}
    for name, svc in services.items():
        health = svc.get("healthcheck")
        assert health, f"{name} has no healthcheck"
        if name in one_shots:
            assert health == {"disable": True}, name
        else:
            assert not health.get("disable") and health["test"], name
        for dependency, condition in svc.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            expected = "service_completed_successfully" if dependency in one_shots else "service_healthy"
            assert condition == {"condition": expected}, f"{name} -> {dependency}"


def test_compose_runs_every_stage_from_one_image() -> None:
    services = compose()["services"]
    for name in (*STAGES, "simfarm"):
        svc = services[name]
        assert svc["image"] == "lithowatch:local"
        assert svc["build"] == {"context": ".", "dockerfile": "deploy/docker/Dockerfile"}
        assert svc["command"] == (
            ["service", name] if name in STAGES else ["simfarm", "--quiet", "--rate", "10"]
        )
        env = svc["environment"]
        assert env["LITHOWATCH_METRICS_PORT"] == str(METRICS_PORTS[name])
        assert env["LITHOWATCH_METRICS_HOST"] == "0.0.0.0"
        assert env["LITHOWATCH_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["LITHOWATCH_REDIS_URL"] == f"redis://:{TEST_ENV['REDIS_PASSWORD']}@redis:6379/0"
        assert "blobs:/var/lib/lithowatch/blobs" in svc["volumes"]
        assert svc["depends_on"]["topic-init"] == {"condition": "service_completed_successfully"}
    assert services["simfarm"]["profiles"] == ["simfarm"]
    assert "snapshots:/var/lib/lithowatch/snapshots" in services["novelty"]["volumes"]
    assert services["novelty"]["environment"]["LITHOWATCH_SNAPSHOT_DIR"] == "/var/lib/lithowatch/snapshots"
    assert services["embed"]["environment"]["LITHOWATCH_MODEL_PATH"].startswith("/var/lib/lithowatch/models/")
    assert services["explain"]["ports"] == ["127.0.0.1:9105:9105"]


def test_compose_infrastructure() -> None:
    services = compose({**TEST_ENV, "LITHOWATCH_PARTITIONS": "8"})["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "KAFKA_ZOOKEEPER_CONNECT" not in kafka["environment"]
    assert services["topic-init"]["environment"]["LITHOWATCH_PARTITIONS"] == "8"
    assert services["dedupe"]["environment"]["LITHOWATCH_PARTITIONS"] == "8"
    assert (
        "./deploy/kafka/create-topics.sh:/opt/lithowatch/create-topics.sh:ro"
        in services["topic-init"]["volumes"]
    )
    assert "--kafka.server=kafka:9092" in services["kafka-exporter"]["command"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    grafana_volumes = services["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana_volumes
    assert "./deploy/grafana/dashboards:/etc/grafana/dashboards:ro" in grafana_volumes
    assert services["redis"]["environment"]["REDIS_PASSWORD"] == TEST_ENV["REDIS_PASSWORD"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"


# --------------------------------------------------------------------------- topics


def fake_kafka_bin(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("kafka-topics.sh", "kafka-configs.sh"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir, log


def test_topic_script_creates_every_topic_with_the_partition_count(tmp_path: Path) -> None:
    from shared.contracts import Topics

    bin_dir, log = fake_kafka_bin(tmp_path)
    env = {
        "PATH": os.environ["PATH"],
        "KAFKA_BIN": str(bin_dir),
        "KAFKA_BOOTSTRAP": "broker:9092",
        "LITHOWATCH_PARTITIONS": "6",
    }
    result = subprocess.run(
        ["bash", str(TOPIC_SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    creates = [line for line in log.read_text().splitlines() if " --create " in line]
    created = {re.search(r"--topic (\S+)", line).group(1): line for line in creates}  # type: ignore[union-attr]
    assert sorted(created) == sorted(Topics.all())
    for topic, line in created.items():
        assert (
            "--bootstrap-server broker:9092" in line
            and "--partitions 6" in line
            and "--if-not-exists" in line
        )
        assert ("cleanup.policy=compact" in line) == (topic in Topics.compacted()), topic
    assert any(
        "kafka-configs.sh" in line and "cleanup.policy=compact" in line and Topics.LIBRARY in line
        for line in log.read_text().splitlines()
    )


def test_topic_script_rejects_a_bad_partition_count(tmp_path: Path) -> None:
    bin_dir, _ = fake_kafka_bin(tmp_path)
    env = {"PATH": os.environ["PATH"], "KAFKA_BIN": str(bin_dir), "LITHOWATCH_PARTITIONS": "four"}
    result = subprocess.run(
        ["bash", str(TOPIC_SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2 and "LITHOWATCH_PARTITIONS" in result.stderr


def test_kubernetes_topic_script_is_the_compose_one() -> None:
    assert (K8S / "base" / "create-topics.sh").read_bytes() == TOPIC_SCRIPT.read_bytes()


# --------------------------------------------------------------------------- Grafana


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    (datasources,) = [load_yaml(p) for p in GRAFANA_DATASOURCES.glob("*.yml")]
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (providers,) = [load_yaml(p) for p in GRAFANA_DASHBOARD_PROVIDERS.glob("*.yml")]
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    board = json.loads(DASHBOARD.read_text())
    # the datasource is a variable (any Prometheus can be chosen on import), defaulting to ours
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus" and variable["current"]["value"] == source["uid"]
    for panel in dashboard_panels(board["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert "lithowatch-prometheus" not in json.dumps(board["panels"])  # no hard-coded uid left


def test_dashboard_queries_only_known_metrics() -> None:
    allowed = exposed_series_names() | recording_rule_names() | {"ALERTS"}
    for title, expr in dashboard_expressions():
        unknown = promql_metric_names(expr) - allowed
        assert not unknown, f"panel '{title}' queries unknown metrics {unknown}"


def test_dashboard_covers_what_on_call_needs() -> None:
    queried = set().union(*(promql_metric_names(expr) for _, expr in dashboard_expressions()))
    expected = {
        "lithowatch:stage_throughput:rate1m",
        "lithowatch:stage_latency_seconds:p99_5m",
        "lithowatch:end_to_end_latency_seconds:p99_5m",
        "lithowatch:novelty_ratio:rate10m",
        "lithowatch:duplicates:rate5m",
        "lithowatch:dlq:rate5m",
        "lithowatch:consumer_lag:sum",
        "lithowatch_index_size",
        "lithowatch:batch_size:p50_5m",
        "lithowatch_embed_images_per_second",
        "lithowatch_embed_busy_ratio",
        "ALERTS",
    }
    assert expected <= queried, expected - queried


def test_dashboard_links_alerts_to_the_explanations_page() -> None:
    board = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "LITHOWATCH_ALERTS_URL"]
    assert variable["query"] == "http://localhost:9105"
    url = "${LITHOWATCH_ALERTS_URL}/alerts"
    alert_panels = [
        panel
        for panel in dashboard_panels(board["panels"])
        if any(
            "ALERTS" in t.get("expr", "") or "lithowatch:alerts" in t.get("expr", "")
            for t in panel.get("targets", [])
        )
    ]
    assert alert_panels
    for panel in alert_panels:
        links = panel["fieldConfig"]["defaults"].get("links", [])
        assert any(link["url"] == url for link in links), panel["title"]
    annotations = [a for a in board["annotations"]["list"] if a.get("expr", "").startswith("ALERTS{")]
    assert annotations and all(a["enable"] for a in annotations)


def test_dashboard_layout_has_unique_ids_and_no_overlaps() -> None:
    panels = list(dashboard_panels(json.loads(DASHBOARD.read_text())["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


# --------------------------------------------------------------------------- Kubernetes


def test_kubernetes_manifests_parse_and_kustomizations_resolve() -> None:
    documents = k8s_documents()
    assert documents
    for path, doc in documents:
        assert "kind" in doc, path
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = load_yaml(kustomization)
        for resource in spec.get("resources", []):
            assert (kustomization.parent / resource).exists(), f"{kustomization}: {resource}"
        for generator in spec.get("configMapGenerator", []):
            for file in generator.get("files", []):
                assert (kustomization.parent / file).is_file(), f"{kustomization}: {file}"


def test_every_stage_deployment_has_resources_probes_and_metrics() -> None:
    found = deployments()
    for stage in STAGES:
        deployment = found[f"lithowatch-{stage}"]
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        (container,) = spec["template"]["spec"]["containers"]
        assert container["args"] == ["service", stage]
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), stage
        assert "memory" in resources["limits"], stage
        # ready = consuming; alive = the loop turns (an outage or a spare replica is no restart)
        probes = {"startupProbe": "/livez", "readinessProbe": "/healthz", "livenessProbe": "/livez"}
        for probe, path in probes.items():
            assert container[probe]["httpGet"]["path"] == path, f"{stage} {probe}"
            assert container[probe]["httpGet"]["port"] == "metrics", f"{stage} {probe}"
        (port,) = container["ports"]
        assert port == {"name": "metrics", "containerPort": METRICS_PORTS[stage]}
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["LITHOWATCH_METRICS_PORT"] == str(METRICS_PORTS[stage])
        annotations = spec["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(METRICS_PORTS[stage])
        env_from = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert env_from == {"lithowatch-config", "lithowatch-secrets"}


def test_embed_deployment_requests_a_gpu_and_the_cuda_image() -> None:
    (container,) = deployments()["lithowatch-embed"]["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("lithowatch-cuda:")
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "LITHOWATCH_DEVICE", "value": "cuda"} in container["env"]
    for stage in ("dedupe", "align", "novelty", "explain"):
        (other,) = deployments()[f"lithowatch-{stage}"]["spec"]["template"]["spec"]["containers"]
        assert "nvidia.com/gpu" not in other["resources"]["requests"], stage


def test_kubernetes_services_select_their_deployments() -> None:
    found = deployments()
    services = {doc["metadata"]["name"]: doc for _, doc in k8s_documents() if doc.get("kind") == "Service"}
    for stage in STAGES:
        service = services[f"lithowatch-{stage}"]
        labels = found[f"lithowatch-{stage}"]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["ports"] == [
            {"name": "metrics", "port": METRICS_PORTS[stage], "targetPort": "metrics"}
        ]


def test_kubernetes_storage_and_topic_job() -> None:
    claims = {
        doc["metadata"]["name"] for _, doc in k8s_documents() if doc.get("kind") == "PersistentVolumeClaim"
    }
    assert claims == {"lithowatch-blobs", "lithowatch-snapshots", "lithowatch-models"}
    (job,) = [doc for _, doc in k8s_documents() if doc.get("kind") == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("apache/kafka:")
    assert container["command"] == ["/bin/bash", "/opt/lithowatch/create-topics.sh"]
    assert "resources" in container


def test_secret_template_holds_no_secret_and_is_not_applied() -> None:
    template = K8S / "base" / "secret.template.yaml"
    (secret,) = load_yaml_documents(template)
    assert secret["kind"] == "Secret"
    assert all("CHANGE_ME" in value for value in secret["stringData"].values())
    assert template.name not in load_yaml(K8S / "base" / "kustomization.yaml")["resources"]
    for _, doc in k8s_documents():
        if doc.get("kind") == "Secret":
            assert all("CHANGE_ME" in str(v) for v in (doc.get("stringData") or {}).values())
            assert not doc.get("data")


def test_kustomize_builds_when_kubectl_is_available() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kustomize build not checked")
    for target in (K8S, K8S / "monitoring"):
        result = subprocess.run(
            [kubectl, "kustomize", str(target)], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
        kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
        assert kinds.count("Deployment") == len(STAGES)
        namespaces = {
            doc["metadata"].get("namespace")
            for doc in yaml.safe_load_all(result.stdout)
            if doc and doc["kind"] != "Namespace"
        }
        assert namespaces == {"lithowatch"}, target


# --------------------------------------------------------------------------- images


def test_dockerfiles() -> None:
    cpu = (DEPLOY / "docker" / "Dockerfile").read_text()
    cuda = (DEPLOY / "docker" / "Dockerfile.cuda").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in cpu
    assert "download.pytorch.org/whl/cpu" in cpu
    assert "ARG CUDA_IMAGE=nvidia/cuda:" in cuda and "-runtime-" in cuda
    for dockerfile in (cpu, cuda):
        assert len(re.findall(r"^FROM ", dockerfile, re.MULTILINE)) == 2, "multi-stage: build and runtime"
        assert "USER lithowatch" in dockerfile
        assert 'ENTRYPOINT ["lithowatch"]' in dockerfile
        for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.MULTILINE):
            assert (REPO / source).exists() or source == "README.md", source
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    packages = ("!shared/", "!toolkit/", "!services/", "!app/")
    for needed in ("!pyproject.toml", *packages, "!deploy/docker/healthcheck.py"):
        assert needed in ignore


def load_healthcheck() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "lithowatch_healthcheck", DEPLOY / "docker" / "healthcheck.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_container_healthcheck_exit_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    healthcheck = load_healthcheck()
    seen: list[str] = []

    def answer(url: str, timeout: float) -> _Response:
        seen.append(url)
        if url.endswith("/healthz"):
            raise urllib.error.HTTPError(url, 503, "not ready", Message(), None)
        if ":1/" in url:
            raise urllib.error.URLError("connection refused")
        return _Response(200)

    monkeypatch.setattr(urllib.request, "urlopen", answer)
    monkeypatch.setenv("LITHOWATCH_METRICS_PORT", "9104")
    assert healthcheck.main(["lithowatch-healthcheck"]) == 1
    assert healthcheck.main(["lithowatch-healthcheck", "/metrics"]) == 0
    monkeypatch.setenv("LITHOWATCH_METRICS_PORT", "1")
    assert healthcheck.main(["lithowatch-healthcheck", "/metrics"]) == 1
    assert seen == [
        "http://127.0.0.1:9104/healthz",
        "http://127.0.0.1:9104/metrics",
        "http://127.0.0.1:1/metrics",
    ]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_operator_objects_carry_the_label_kube_prometheus_stack_selects_on() -> None:
    for name in ("podmonitor.yaml", "prometheusrule.yaml"):
        labels = load_yaml(K8S / "monitoring" / name)["metadata"]["labels"]
        assert labels["release"] == "kube-prometheus-stack", name
        assert labels["app.kubernetes.io/name"] == "lithowatch", name
    selector = load_yaml(K8S / "monitoring" / "podmonitor.yaml")["spec"]["selector"]["matchLabels"]
    assert "release" not in selector  # the pods are selected by the app label only
