"""``lithowatch up``: the whole pipeline on this machine, until Ctrl-C.

Broker and Redis are the ones the settings name, else embedded ones started here; the
services run as child processes (restarted when they exit). Once the stack is up, its
address goes to ``WORKDIR/connection.env`` (readable by this user only, removed on exit),
which every other ``lithowatch`` command run from the same folder reads by default
(:func:`shared.settings.connection_file`): ``lithowatch simfarm`` or ``tail`` in a second
terminal reach this stack with no address given.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from app.launcher import EmbeddedStack, write_private
from app.up_library import UpSettings, plan_library
from shared.display import mask_url
from shared.errors import ConfigError
from shared.settings import (
    CONNECTION_FILE_NAME,
    DEFAULT_RUN_DIR,
    UP_PID_KEY,
    load_settings,
    read_connection_pid,
)

# what a second terminal needs besides the addresses: the user's Kafka security settings
_CARRIED = (
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_cafile",
    "kafka_ssl_certfile",
    "kafka_ssl_keyfile",
    "kafka_ssl_check_hostname",
    "kafka_compression",
    "kafka_max_message_bytes",
    "redis_password",
    "redis_ssl_ca_certs",
    "inline_image_limit_bytes",
    "max_image_pixels",
)


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser(
        "up", help="broker + Redis (embedded unless configured) + every service, until Ctrl-C"
    )
    up.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="partitions per topic (default: LITHOWATCH_PARTITIONS, 4)",
    )
    up.add_argument("--workdir", type=Path, default=DEFAULT_RUN_DIR, help="logs, state and connection.env")
    up.add_argument("--services", default=None, help="comma-separated subset (default: all installed)")
    library = up.add_mutually_exclusive_group()
    library.add_argument(
        "--library", type=Path, default=None, help="data set folder to publish as the reference library"
    )
    library.add_argument(
        "--no-library", action="store_true", help="publish no library (novelty holds results until one is)"
    )
    up.add_argument("--exit-when-ready", action="store_true", help="stop once everything is ready (a check)")
    up.set_defaults(func=cmd_up)


def _setting_value(value: object) -> str:
    secret = getattr(value, "get_secret_value", None)
    return str(secret() if callable(secret) else value)


def write_connection_file(path: Path, stack: EmbeddedStack, settings: UpSettings) -> None:
    """The stack's address and the user's security settings, for every other command (mode 0600)."""
    written = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [
        f"# written by lithowatch up at {written}; removed when it stops",
        f"{UP_PID_KEY}={os.getpid()}",
        f"LITHOWATCH_KAFKA_BOOTSTRAP={stack.bootstrap}",
        f"LITHOWATCH_REDIS_URL={stack.redis}",
        f"LITHOWATCH_PARTITIONS={stack.partitions}",
        f"LITHOWATCH_BLOB_ROOT={stack.blobs}",
    ]
    for name in _CARRIED:
        value = getattr(settings, name)
        if name in settings.model_fields_set and value is not None:
            lines.append(f"LITHOWATCH_{name.upper()}={_setting_value(value)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, "\n".join(lines) + "\n")


def _remove_own_connection_file(path: Path) -> None:
    if read_connection_pid(path) == os.getpid():
        path.unlink(missing_ok=True)


def cmd_up(args: argparse.Namespace) -> int:
    from app.registry import available_services
    from app.supervisor import SHARED_HOST_NICE, Pipeline
    from shared.settings import live_connection_file

    names = available_services() if args.services is None else [s.strip() for s in args.services.split(",")]
    unknown = sorted(set(names) - set(available_services()))
    if unknown:
        raise ConfigError(f"unknown or unavailable services: {', '.join(unknown)}")
    if args.partitions is not None and not 1 <= args.partitions <= 1024:
        raise ConfigError(f"--partitions must be between 1 and 1024, not {args.partitions}")
    # up starts the stack others connect to: it reads the user's settings, never a connection file
    settings = load_settings(UpSettings, args.settings_file, connection=False)
    workdir = args.workdir.resolve()
    connection = workdir / CONNECTION_FILE_NAME
    if live_connection_file(connection):
        raise ConfigError(
            f"lithowatch up (pid {read_connection_pid(connection)}) already runs in {workdir}: "
            "stop it first, or give another --workdir"
        )
    begin = time.monotonic()
    blob_root = settings.blob_root.resolve()
    stack = EmbeddedStack.from_settings(settings, workdir, args.partitions, blob_root)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    def say(message: str) -> None:
        print(message, flush=True)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stack.start()
    # every service shares this machine's cores: one torch thread measured fastest for the embedder
    service_env = {} if os.environ.get("LITHOWATCH_TORCH_THREADS") else {"LITHOWATCH_TORCH_THREADS": "1"}
    if args.settings_file:  # the services read the same file (the stack's addresses still win)
        service_env["LITHOWATCH_SETTINGS_FILE"] = str(Path(args.settings_file).resolve())
    pipeline = Pipeline(stack, service_env=service_env, default_ports=True, nice=SHARED_HOST_NICE)
    try:
        broker = f"{stack.bootstrap} ({'embedded' if stack.embedded_broker else 'external'})"
        redis = f"{mask_url(stack.redis)} ({'embedded' if stack.embedded_redis else 'external'})"
        say(f"broker {broker}  redis {redis}  partitions {stack.partitions}")
        say(f"blobs {stack.blobs}  logs {stack.workdir / 'logs'}")
        write_connection_file(connection, stack, settings)
        hint = (
            ""
            if args.workdir == DEFAULT_RUN_DIR
            else f" (elsewhere: LITHOWATCH_CONNECTION_FILE={connection})"
        )
        say(f"connection settings in {connection}: other lithowatch commands run here use them{hint}")
        if "novelty" in names:
            reachable = settings.model_copy(
                update={
                    "kafka_bootstrap": stack.bootstrap,
                    "partitions": stack.partitions,
                    "blob_root": stack.blobs,
                }
            )
            plan = plan_library(reachable, args.library, args.no_library, workdir, say)
            pipeline.service_env = {**service_env, **plan.service_env}
        pipeline.start_all(names)
        pipeline.wait_ready(timeout_seconds=180)
        ready = time.monotonic() - begin
        for running in pipeline.services:
            say(f"  {running.name:<8} pid {running.process.pid:<7} {running.metrics_url}")
        say(f"all {len(names)} services ready in {ready:.1f} s; Ctrl-C to stop")
        while not stopping and not args.exit_when_ready:
            pipeline.revive(lambda message: print(message, file=sys.stderr, flush=True))
            time.sleep(1.0)
    finally:
        _remove_own_connection_file(connection)
        pipeline.stop()
        stack.stop()
    return 0
