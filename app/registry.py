"""The services ``lithowatch service NAME`` and ``lithowatch up`` can run, by name.

An explicit registry: each entry is a function that imports its service's ``main`` when
called, so a service process imports only what its own service needs.
"""

from __future__ import annotations

from collections.abc import Callable

from shared.errors import ConfigError

ServiceMain = Callable[[str | None], int]


# Each loader imports its service or command module when called: a service process imports
# only what its own service needs (the embedder's torch is never loaded by `lithowatch topics`).
def _dedupe() -> ServiceMain:
    from services.dedupe.main import main

    return main


def _align() -> ServiceMain:
    from services.align.main import main

    return main


def _embed() -> ServiceMain:
    from services.embed.main import main

    return main


def _novelty() -> ServiceMain:
    from services.novelty.main import main

    return main


def _explain() -> ServiceMain:
    from services.explain.main import main

    return main


#: Services runnable with ``lithowatch service NAME``.
SERVICES: dict[str, Callable[[], ServiceMain]] = {
    "dedupe": _dedupe,
    "align": _align,
    "embed": _embed,
    "novelty": _novelty,
    "explain": _explain,
}


def available_services() -> list[str]:
    return list(SERVICES)


def run_service(name: str, settings_file: str | None = None) -> int:
    if name not in SERVICES:
        raise ConfigError(f"unknown service {name!r}; known: {', '.join(SERVICES)}")
    return int(SERVICES[name]()(settings_file))
