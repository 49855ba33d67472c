"""The ``lithowatch`` command line.

Every subcommand returns an exit code; a :class:`~shared.errors.LithowatchError`
is printed as one line (no traceback) with exit code 2.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import importlib.util
import logging
import signal
import sys
from collections.abc import Sequence

from shared.errors import ConfigError, LithowatchError

#: Services runnable with ``lithowatch service NAME``; each module has ``main(settings_file) -> int``.
SERVICE_MODULES: dict[str, str] = {
    "dedupe": "services.dedupe.main",
    "align": "services.align.main",
    "embed": "services.embed.main",
    "novelty": "services.novelty.main",
    "explain": "services.explain.main",
}
#: Modules contributing subcommands through ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "shared.ops_cli",
    "services.simfarm.main",
    "services.novelty.library_cli",
    "shared.litho.dataset_cli",
    "shared.demo.run",
    "shared.calibration.cli",
    "shared.model.cli",
    "services.explain.cli",
    "shared.dlq_cli",
    "shared.blobs_cli",
)


def available_services() -> list[str]:
    found = []
    for name, module in SERVICE_MODULES.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            if importlib.util.find_spec(module) is not None:
                found.append(name)
        except ModuleNotFoundError:
            continue
    return found


def run_service(name: str, settings_file: str | None = None) -> int:
    if name not in SERVICE_MODULES:
        raise ConfigError(f"unknown service {name!r}; known: {', '.join(SERVICE_MODULES)}")
    if name not in available_services():
        raise ConfigError(f"service {name!r} is not installed in this build")
    module = importlib.import_module(SERVICE_MODULES[name])
    return int(module.main(settings_file))


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


def build_parser(with_commands: bool = True) -> argparse.ArgumentParser:
    """The argument parser; ``with_commands=False`` leaves out the command modules (fast service start)."""
    parser = argparse.ArgumentParser(
        prog="lithowatch", description="Streaming novelty detection for lithography simulation farms"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--settings-file", default=None, help="dotenv-style file of LITHOWATCH_* settings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    service = sub.add_parser("service", help="run one service in the foreground")
    service.add_argument("name", help=f"one of: {', '.join(SERVICE_MODULES)}")
    service.set_defaults(func=_cmd_service)
    for module_name in COMMAND_MODULES if with_commands else ():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # a service process imports only what its own service needs
    parser = build_parser(with_commands=_command_of(argv) != "service")
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
