#!/usr/bin/env python3
"""Container health probe: exit 0 when the service's health endpoint answers 200.

Docker's HEALTHCHECK and compose call this inside the container; it needs nothing but the
standard library, so it works before (and regardless of) the service's own imports.
Usage: ``lithowatch-healthcheck [PATH]`` (PATH defaults to ``/healthz``; the farm emulator,
which consumes nothing, is probed on ``/metrics``). The port comes from
``LITHOWATCH_METRICS_PORT`` (default 9100).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 3.0


def probe(url: str, timeout_seconds: float = TIMEOUT_SECONDS) -> int:
    """Return the process exit code for one GET of ``url``: 0 on HTTP 200, 1 otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"{url}: HTTP {exc.code}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    port = os.environ.get("LITHOWATCH_METRICS_PORT", "9100")
    return probe(f"http://127.0.0.1:{port}{path}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
