"""``lithowatch library build|list|promote|drop|snapshot``: the reference set on its topic.

Entries are addressed by entry id. A novel result's provisional entry has the id
``provisional/<result_id>``; ``promote`` and ``drop`` also accept the bare result id
of a provisional entry. Reference ids from a data set may not start with
``provisional/`` (``build`` refuses them), so the two kinds never share a key.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from shared.blobstore import LocalBlobStore
from shared.contracts import Hashes, LibraryEntry, Topics, Vector
from shared.dataset import read_dataset
from shared.errors import ConfigError, ContractError
from shared.hashing import exact_digest
from shared.imageref import make_image_ref
from shared.kafka_io import make_producer, read_to_end
from shared.settings import CommonSettings, load_settings


def register(sub: argparse._SubParsersAction) -> None:
    library = sub.add_parser("library", help="build and curate the reference library")
    cmds = library.add_subparsers(dest="library_command", metavar="ACTION", required=True)
    build = cmds.add_parser("build", help="embed a data set and publish it as reference entries")
    build.add_argument("--dataset", required=True, type=Path)
    build.add_argument("--model", required=True, type=Path, help="encoder checkpoint directory")
    build.add_argument("--device", default="auto")
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument("--snapshot", type=Path, default=None, help="also write a FAISS snapshot here")
    build.set_defaults(func=cmd_build)
    listing = cmds.add_parser("list", help="list entries (last record per id)")
    listing.add_argument("--provisional", action="store_true", help="only provisional entries")
    listing.set_defaults(func=cmd_list)
    for action, text in (
        ("promote", "make a provisional entry a reference entry"),
        ("drop", "remove an entry (tombstone)"),
    ):
        cmd = cmds.add_parser(action, help=text)
        cmd.add_argument("ids", nargs="+", metavar="ID")
        cmd.set_defaults(func=cmd_promote if action == "promote" else cmd_drop)
    snap = cmds.add_parser("snapshot", help="replay the topic and write a FAISS snapshot")
    snap.add_argument("--out", required=True, type=Path)
    snap.set_defaults(func=cmd_snapshot)


def read_library(
    settings: CommonSettings, timeout_seconds: float = 60.0
) -> dict[str, tuple[LibraryEntry, int, int]]:
    """The last record per entry id, with its partition and offset (a tombstone removes the entry)."""
    latest: dict[str, tuple[LibraryEntry, int, int]] = {}
    for record in read_to_end(settings, Topics.LIBRARY, timeout_seconds):
        if record.value is None:
            latest.pop((record.key or b"").decode(errors="replace"), None)
            continue
        try:
            entry = LibraryEntry.from_wire(record.value or b"")
        except ValueError:
            continue
        latest[entry.entry_id] = (entry, record.partition, record.offset)
    return latest


def publish_entries(
    settings: CommonSettings, entries: list[LibraryEntry], progress: bool = False
) -> list[tuple[int, int]]:
    """Publish entries keyed by entry id; a delete is a tombstone (null value), which compaction
    removes with every earlier record of the entry."""
    producer = make_producer(settings, client_id="lithowatch-library")
    try:
        futures = [
            producer.send(
                Topics.LIBRARY,
                key=e.entry_id.encode(),
                value=None if e.op == "delete" else e.model_dump_json().encode(),
            )
            for e in tqdm(entries, desc="publishing", unit="entry", disable=not progress)
        ]
        producer.flush(timeout=120)
        placed = []
        for future in futures:
            meta = future.get(timeout=60)
            placed.append((meta.partition, meta.offset))
        return placed
    finally:
        producer.close(timeout=5)


def build_library(
    settings: CommonSettings,
    dataset_dir: Path,
    model_dir: Path,
    device: str = "auto",
    batch_size: int = 64,
    snapshot: Path | None = None,
) -> int:
    """Embed a data set and publish it as reference entries; return how many."""
    from shared.index import PROVISIONAL_ID_PREFIX, LibraryState
    from shared.model import embed_dataset, load_encoder

    dataset = read_dataset(dataset_dir)
    reserved = [item.id for item in dataset.items if item.id.startswith(PROVISIONAL_ID_PREFIX)]
    if reserved:
        raise ConfigError(
            f"data set ids may not start with {PROVISIONAL_ID_PREFIX!r} (kept for novel results): "
            + ", ".join(reserved[:5])
        )
    encoder = load_encoder(model_dir, device=device)
    vectors = embed_dataset(dataset, encoder, batch_size=batch_size)
    store = LocalBlobStore(settings.blob_root)
    entries = []
    for item, vector in zip(tqdm(dataset.items, desc="entries", unit="entry"), vectors, strict=True):
        mask, simulated = item.load_mask(), item.load_simulated()
        entries.append(
            LibraryEntry(
                entry_id=item.id,
                status="reference",
                vector=Vector.from_array(vector),
                model_version=encoder.model_version,
                labels=dict(item.labels),
                mask=make_image_ref(mask, "png", store, settings.inline_image_limit_bytes),
                simulated=make_image_ref(simulated, "png", store, settings.inline_image_limit_bytes),
                # the dedupe stage's digest: a result replaying this item is recognised as this entry
                hashes=Hashes(exact=exact_digest(mask, simulated)),
            )
        )
    placed = publish_entries(settings, entries, progress=True)
    if snapshot is not None:
        from services.novelty.library_feed import library_topic_id

        state = LibraryState(encoder.model_version, encoder.dim)
        for entry, (partition, offset) in zip(entries, placed, strict=True):
            state.apply(entry, partition, offset)
        state.snapshot(snapshot, topic_id=library_topic_id(settings))
    return len(entries)


def cmd_build(args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings, args.settings_file)
    count = build_library(settings, args.dataset, args.model, args.device, args.batch_size, args.snapshot)
    print(f"published {count} reference entries to {Topics.LIBRARY}")
    if args.snapshot is not None:
        print(f"snapshot written under {args.snapshot}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings, args.settings_file)
    latest = read_library(settings)
    shown = 0
    for entry_id, (entry, _, _) in sorted(latest.items()):
        if entry.op == "delete" or (args.provisional and entry.status != "provisional"):
            continue
        family = entry.labels.get("family", "")
        print(f"{entry_id:<40} {entry.status:<12} {family!s:<12} {entry.alert_id or ''}")
        shown += 1
    print(f"{shown} entries")
    return 0


def resolve_entry_id(latest: dict[str, tuple[LibraryEntry, int, int]], given: str) -> str | None:
    """The live entry ``given`` names: its entry id, or the result id of a provisional entry."""
    from shared.index import provisional_entry_id  # FAISS loads only for commands that need it

    for entry_id in (given, provisional_entry_id(given)):
        if entry_id in latest and latest[entry_id][0].op != "delete":
            return entry_id
    return None


def _republish(args: argparse.Namespace, promote: bool) -> int:
    settings = load_settings(CommonSettings, args.settings_file)
    latest = read_library(settings)
    resolved = {given: resolve_entry_id(latest, given) for given in args.ids}
    missing = [given for given, entry_id in resolved.items() if entry_id is None]
    if missing:
        raise ConfigError(f"no such library entries: {', '.join(missing)}")
    ids = list(dict.fromkeys(entry_id for entry_id in resolved.values() if entry_id is not None))
    if promote:
        updates = [latest[i][0].model_copy(update={"status": "reference"}) for i in ids]
    else:
        updates = [
            LibraryEntry(entry_id=i, op="delete", model_version=latest[i][0].model_version) for i in ids
        ]
    publish_entries(settings, updates)
    print(f"{'promoted' if promote else 'dropped'} {len(updates)} entries")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    return _republish(args, promote=True)


def cmd_drop(args: argparse.Namespace) -> int:
    return _republish(args, promote=False)


def cmd_snapshot(args: argparse.Namespace) -> int:
    from shared.index import LibraryState

    settings = load_settings(CommonSettings, args.settings_file)
    latest = read_library(settings)
    records = sorted(latest.values(), key=lambda r: (r[1], r[2]))
    upserts = [r for r in records if r[0].op == "upsert" and r[0].vector is not None]
    if not upserts:
        raise ConfigError("the library topic holds no entries")
    first = upserts[0][0]
    assert first.vector is not None
    from services.novelty.library_feed import library_topic_id

    state = LibraryState(first.model_version, first.vector.dim)
    refused = 0
    for entry, partition, offset in records:
        try:
            state.apply(entry, partition, offset)
        except ContractError as exc:  # as the service does: logged, left out
            refused += 1
            print(f"left out: {exc}")
    path = state.snapshot(args.out, topic_id=library_topic_id(settings))
    print(f"snapshot of {len(state)} entries ({refused} left out): {path}")
    return 0
