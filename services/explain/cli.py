"""``lithowatch explain RESULT_ID --out panel.png``: render a result's panel offline.

Looks the result up on the alerts topic (a novelty alert: the result beside its
nearest neighbours) and, failing that, on the duplicates topic (a duplicate the
novelty stage confirmed with ``embedding+hash`` / ``embedding+descriptors``: the
result beside the library entry, with the matched keypoints from the record's
details). The duplicate's images come from the embedded topic (the result) and
the library topic (the entry); the last record per id wins.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from services.explain.core import alert_tiles
from services.explain.duplicates import HYBRID_METHODS, duplicate_tiles, render_duplicate_panel
from services.explain.render import encode_panel_png, render_panel
from shared.blobstore import LocalBlobStore
from shared.contracts import (
    AlertRecord,
    Contract,
    DuplicateRecord,
    EmbeddedResult,
    ImageRef,
    LibraryEntry,
    Topics,
)
from shared.display import terminal_safe
from shared.errors import ConfigError, InputError
from shared.imageref import ImageLoader
from shared.kafka_io import read_to_end
from shared.settings import CommonSettings, load_settings

M = TypeVar("M", bound=Contract)


def register(subparsers: argparse._SubParsersAction) -> None:
    cmd = subparsers.add_parser("explain", help="render the panel of an alert or a confirmed duplicate")
    cmd.add_argument("result_id", metavar="RESULT_ID")
    cmd.add_argument("--out", required=True, type=Path, help="PNG file to write")
    cmd.add_argument("--neighbours", type=int, default=3, help="neighbours shown beside an alert")
    cmd.add_argument("--timeout", type=float, default=60.0, help="seconds to read each topic")
    cmd.set_defaults(func=cmd_explain)


def last_matching(settings: CommonSettings, topic: str, model: type[M], match: Callable[[M], bool],
                  timeout_seconds: float) -> M | None:
    """The last record of ``topic`` (read from the beginning to its end) that ``match`` accepts."""
    found: M | None = None
    for record in read_to_end(settings, topic, timeout_seconds):
        try:
            value = model.from_wire(record.value or b"")
        except ValueError:
            continue
        if match(value):
            found = value
    return found


def _optional(load: Callable[[ImageRef], np.ndarray], ref: ImageRef | None) -> np.ndarray | None:
    if ref is None:
        return None
    try:
        return load(ref)
    except InputError:
        return None  # a missing image leaves an empty tile, not a missing panel


def duplicate_panel(settings: CommonSettings, record: DuplicateRecord, load: Callable[[ImageRef], np.ndarray],
                    timeout_seconds: float) -> np.ndarray:
    result = last_matching(settings, Topics.EMBEDDED, EmbeddedResult,
                           lambda r: r.result_id == record.result_id, timeout_seconds)
    entry = last_matching(settings, Topics.LIBRARY, LibraryEntry,
                          lambda e: e.entry_id == record.duplicate_of, timeout_seconds)
    result_images = ((_optional(load, result.mask), _optional(load, result.aligned_simulated))
                     if result is not None else (None, None))
    library_images = ((_optional(load, entry.mask), _optional(load, entry.simulated))
                      if entry is not None else (None, None))
    tiles = duplicate_tiles(record.result_id, record.duplicate_of, record.method, dict(record.details),
                            result_images, library_images, dict(record.labels))
    return render_duplicate_panel(tiles, record.result_id, record.duplicate_of, record.method)


def cmd_explain(args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings, getattr(args, "settings_file", None))
    load = ImageLoader(LocalBlobStore(settings.blob_root), settings.max_image_pixels)
    alert = last_matching(settings, Topics.ALERTS, AlertRecord, lambda a: a.result_id == args.result_id,
                          args.timeout)
    kind: str
    if alert is not None:
        tiles = alert_tiles(alert, load, args.neighbours)
        panel = render_panel(tiles, f"alert {alert.alert_id}  result {alert.result_id}  "
                                    f"novelty {alert.novelty_score:.3f}")
        kind = "alert"
    else:
        duplicate = last_matching(
            settings, Topics.DUPLICATES, DuplicateRecord,
            lambda d: d.result_id == args.result_id and d.method in HYBRID_METHODS, args.timeout,
        )
        if duplicate is None:
            raise ConfigError(f"no alert and no confirmed duplicate for result {args.result_id!r}")
        panel = duplicate_panel(settings, duplicate, load, args.timeout)
        kind = f"duplicate of {duplicate.duplicate_of} ({duplicate.method})"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(encode_panel_png(panel))
    size = f"{panel.shape[1]}x{panel.shape[0]}"
    print(terminal_safe(f"{args.result_id}: {kind}; panel {size} written to {args.out}"))
    return 0
