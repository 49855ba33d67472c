"""The ``lithowatch`` command line.

Every subcommand returns an exit code; a :class:`~shared.errors.LithowatchError`
is printed as one line (no traceback) with exit code 2.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from app.registry import SERVICES, run_service
from shared.errors import LithowatchError

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


# Which module contributes which subcommands (through ``register(subparsers)``). A command line
# imports only the module of the command it names: ``lithowatch tail`` does not pay for torch.
COMMAND_MODULES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("up",), "app.up_cli", "register"),
    (("topics", "tail", "alerts", "schemas"), "app.ops_cli", "register"),
    (("simfarm",), "services.simfarm.main", "register"),
    (("library",), "services.novelty.library_cli", "register"),
    (("dataset",), "toolkit.litho.dataset_cli", "register"),
    (("demo",), "app.demo.run", "register"),
    (("calibrate",), "toolkit.calibration.cli", "register"),
    (("eval",), "toolkit.evaluation.cli", "register_eval"),
    (("train",), "toolkit.training.cli", "register"),
    (("explain",), "services.explain.cli", "register"),
    (("dlq",), "app.dlq_cli", "register"),
    (("blobs",), "app.blobs_cli", "register"),
    (("dedupe", "score"), "app.offline.cli", "register"),
)


def _command_registrations(command: str | None = None) -> list[Register]:
    """The ``register`` functions of the module that defines ``command``, or of every module when
    ``command`` is None or unknown (``--help`` lists them all)."""
    import importlib

    chosen = [entry for entry in COMMAND_MODULES if command in entry[0]] or list(COMMAND_MODULES)
    return [getattr(importlib.import_module(module), attr) for _, module, attr in chosen]


def _cmd_service(args: argparse.Namespace) -> int:
    return run_service(args.name, args.settings_file)


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv (skipping global options), without importing anything."""
    skip_next = False
    for token in argv:
        if skip_next:
            skip_next = False
        elif token in ("--log-level", "--settings-file"):
            skip_next = True
        elif not token.startswith("-"):
            return token
    return None


def _version() -> str:
    """The installed distribution's version (a source tree that is not installed says so)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lithowatch")
    except PackageNotFoundError:
        return "(not installed)"


def build_parser(with_commands: bool = True, command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: every command, only ``command``'s module when given, or none with
    ``with_commands=False`` (fast service start)."""
    parser = argparse.ArgumentParser(
        prog="lithowatch", description="Streaming novelty detection for lithography simulation farms"
    )
    parser.add_argument("--version", action="version", version=f"lithowatch {_version()}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--settings-file", default=None, help="dotenv-style file of LITHOWATCH_* settings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    service = sub.add_parser("service", help="run one service in the foreground")
    service.add_argument("name", help=f"one of: {', '.join(SERVICES)}")
    service.set_defaults(func=_cmd_service)
    for register in _command_registrations(command) if with_commands else ():
        register(sub)
    return parser


GLOBAL_OPTIONS = ("--settings-file", "--log-level")


def hoist_global_options(argv: Sequence[str]) -> list[str]:
    """Move ``--settings-file`` and ``--log-level`` (``--opt VALUE`` or ``--opt=VALUE``) in front of
    the subcommand, so they work after it too (``lithowatch topics --settings-file prod.env``)."""
    front: list[str] = []
    rest: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            rest.extend(tokens[i:])
            break
        name = token.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            if "=" in token:
                front.extend(token.split("=", 1))
                i += 1
                continue
            if i + 1 < len(tokens):
                front.extend(tokens[i : i + 2])
                i += 2
                continue
        rest.append(token)
        i += 1
    return front + rest


def main(argv: Sequence[str] | None = None) -> int:
    argv = hoist_global_options(sys.argv[1:] if argv is None else argv)
    # a service process imports only what its own service needs
    command = _command_of(argv)
    parser = build_parser(with_commands=command != "service", command=command)
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` dumps every stack
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except LithowatchError as exc:
        print(f"lithowatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
