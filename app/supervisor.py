"""Runs the whole pipeline on one machine: the embedded stack plus one process per service.

Used by ``lithowatch up``, ``lithowatch demo`` and the end-to-end tests, so the
product and its tests start services the same way.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.launcher import ChildProcess, EmbeddedStack, free_port
from shared.errors import DependencyUnavailable
from shared.settings import DEFAULT_METRICS_PORTS


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as the metrics server binds (SO_REUSEADDR): connections in TIME_WAIT do not make a port busy
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_status(url: str, timeout_seconds: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class RunningService:
    name: str
    process: ChildProcess
    metrics_port: int
    replica: int = 0

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/healthz"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


# The embedder is the pipeline's bottleneck: on one host, the other stages run at a lower CPU
# priority so that a burst they could all work on does not take the embedder's core. Measured
# with ResNet-50 at 224 px on 2 cores (bench/pipeline_bench.py): see docs/performance.md.
SHARED_HOST_NICE: Mapping[str, int] = {"dedupe": 5, "align": 5, "novelty": 5, "explain": 5}


@dataclass
class Pipeline:
    """An embedded stack and the services running against it.

    ``nice`` maps service names to ``LITHOWATCH_CPU_NICE`` (unless ``service_env`` sets it).
    """

    stack: EmbeddedStack
    service_env: Mapping[str, str] = field(default_factory=dict)
    default_ports: bool = False
    services: list[RunningService] = field(default_factory=list)
    nice: Mapping[str, int] = field(default_factory=dict)

    def _env_for(self, name: str, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(self.service_env)
        if name in self.nice and "LITHOWATCH_CPU_NICE" not in env:
            env["LITHOWATCH_CPU_NICE"] = str(self.nice[name])
        env.update(extra_env or {})
        return env

    def start_service(
        self, name: str, replica: int = 0, extra_env: Mapping[str, str] | None = None
    ) -> RunningService:
        port = DEFAULT_METRICS_PORTS.get(name, 0) if self.default_ports and replica == 0 else 0
        if not port or not port_is_free(port):
            port = free_port()
        env = {**self._env_for(name, extra_env), "LITHOWATCH_METRICS_PORT": str(port)}
        log_name = name if replica == 0 else f"{name}-{replica}"
        process = self.stack.spawn_service(name, env, log_name=log_name)
        running = RunningService(name, process, port, replica)
        self.services.append(running)
        return running

    def restart(self, running: RunningService, kill9: bool = False) -> RunningService:
        if kill9:
            running.process.kill9()
        else:
            running.process.stop()
        self.services.remove(running)
        self.stack.children.remove(running.process)
        # the port may have been taken meanwhile (the usual reason a service exits at start)
        port = running.metrics_port if port_is_free(running.metrics_port) else free_port()
        env = {**self._env_for(running.name), "LITHOWATCH_METRICS_PORT": str(port)}
        process = self.stack.spawn_service(running.name, env, log_name=f"{running.name}-{running.replica}")
        replacement = RunningService(running.name, process, port, running.replica)
        self.services.append(replacement)
        return replacement

    def revive(self, say: Callable[[str], None]) -> list[RunningService]:
        """Restart every service whose process has exited, saying so; return the replacements."""
        revived = []
        for running in list(self.services):
            if not running.process.alive():
                say(f"service {running.name} exited; restarting (log: {running.process.log_path})")
                revived.append(self.restart(running))
        return revived

    def start_all(self, names: Sequence[str]) -> list[RunningService]:
        return [self.start_service(name) for name in names]

    def wait_ready(
        self, timeout_seconds: float = 120.0, services: Sequence[RunningService] | None = None
    ) -> float:
        """Wait until every service answers 200 on /healthz; return the seconds waited."""
        begin = time.monotonic()
        pending = list(services if services is not None else self.services)
        while pending:
            for running in list(pending):
                if not running.process.alive():
                    log_path, tail = running.process.log_path, running.process.log_tail()
                    raise DependencyUnavailable(f"service {running.name} exited ({log_path}):\n{tail}")
                if http_status(running.health_url) == 200:
                    pending.remove(running)
            if pending and time.monotonic() - begin > timeout_seconds:
                names = ", ".join(r.name for r in pending)
                raise DependencyUnavailable(f"services not ready after {timeout_seconds:.0f} s: {names}")
            if pending:
                time.sleep(0.2)
        return time.monotonic() - begin

    def logs_dir(self) -> Path:
        return self.stack.workdir / "logs"

    def stop(self) -> None:
        for running in reversed(self.services):
            running.process.stop()
        self.services.clear()
