"""``lithowatch blobs gc``: remove old blobs (images by URI, large DLQ values) from the blob store.

Nothing else ever removes a blob: content addressing makes every put idempotent but
never frees space. Collection goes oldest first by modification time (a put of content
already stored refreshes it); only the store's own files (``<aa>/<sha256>.<ext>`` and
temporary files of puts that died) are touched. A DLQ record whose value lives here
cannot be replayed once its blob is gone: keep ``--max-age-days`` at or above the DLQ
topic's retention.

The images of live library entries (every library topic, the last record per entry) are
never removed: hybrid confirmation, explanation panels and ``library reembed`` read them.
Collection therefore reads the library topics first and stops if the broker cannot be
reached; ``--no-keep-library`` skips that (a store no library points into).
"""

from __future__ import annotations

import argparse
import time

from shared.blobstore import BlobCollection, LocalBlobStore
from shared.errors import ConfigError
from shared.settings import CommonSettings, load_settings

SECONDS_PER_DAY = 86400.0
BLOB_SCHEME = "blob://"


def register(sub: argparse._SubParsersAction) -> None:
    blobs = sub.add_parser("blobs", help="blob store upkeep (gc)")
    verbs = blobs.add_subparsers(dest="blobs_command", metavar="VERB", required=True)
    gc = verbs.add_parser(
        "gc",
        help="remove blobs older than an age and/or beyond a total size, oldest first",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gc.add_argument("--max-age-days", type=float, default=None, help="remove blobs older than this")
    gc.add_argument("--max-bytes", type=int, default=None,
                    help="then remove the oldest until the rest take at most this many bytes")
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    gc.add_argument("--no-keep-library", dest="keep_library", action="store_false",
                    help="do not read the library topics: remove library images like any blob")
    gc.set_defaults(func=cmd_gc)


def format_collection(result: BlobCollection, root: str, now: float) -> list[str]:
    """One line per removed file, then a summary."""
    verb = "would remove" if result.dry_run else "removed"
    lines = []
    for blob in result.removed:
        age_days = (now - blob.mtime) / SECONDS_PER_DAY
        name = blob.path.relative_to(root) if blob.path.is_relative_to(root) else blob.path
        lines.append(f"{verb} {name}  {blob.size_bytes} B  {age_days:.1f} d old  ({blob.why})")
    for failure in result.failed:
        lines.append(f"could not remove {failure}")
    lines.append(f"{verb} {len(result.removed)} files ({result.removed_bytes} B); "
                 f"kept {result.kept_count} blobs ({result.kept_bytes} B) in {root}")
    return lines


def library_blob_keys(settings: CommonSettings) -> tuple[set[str], int, list[str]]:
    """The blob keys (``<sha256>.<ext>``) the live entries of every library topic point at, with
    how many entries were read and from which topics."""
    from services.novelty.curation import library_topics, read_library

    topics = library_topics(settings)
    keys: set[str] = set()
    entries = 0
    for topic in topics:
        for entry, _partition, _offset in read_library(settings, topic).values():
            entries += 1
            for ref in (entry.mask, entry.simulated):
                if ref is not None and ref.uri is not None and ref.uri.startswith(BLOB_SCHEME):
                    keys.add(ref.uri.removeprefix(BLOB_SCHEME))
    return keys, entries, topics


def cmd_gc(args: argparse.Namespace) -> int:
    if args.max_age_days is None and args.max_bytes is None:
        raise ConfigError("blobs gc needs --max-age-days and/or --max-bytes")
    if (args.max_age_days is not None and args.max_age_days < 0) or (
            args.max_bytes is not None and args.max_bytes < 0):
        raise ConfigError("--max-age-days and --max-bytes must not be negative")
    settings = load_settings(CommonSettings, args.settings_file)
    store = LocalBlobStore(settings.blob_root)
    keep: set[str] = set()
    if args.keep_library:
        keep, entries, topics = library_blob_keys(settings)
        where = ", ".join(topics) or "no library topic"
        print(f"keeping {len(keep)} images of {entries} library entries ({where})")
    now = time.time()
    max_age = None if args.max_age_days is None else args.max_age_days * SECONDS_PER_DAY
    result = store.collect(max_age_seconds=max_age, max_total_bytes=args.max_bytes, dry_run=args.dry_run,
                           now=now, keep=keep)
    for line in format_collection(result, str(store.root), now):
        print(line)
    return 1 if result.failed else 0
