"""``lithowatch library build|list|promote|drop|snapshot|reembed``: the reference set on its topic.

Entries are addressed by entry id. A novel result's provisional entry has the id
``provisional/<result_id>``; ``promote`` and ``drop`` also accept the bare result id
of a provisional entry. Reference ids from a data set may not start with
``provisional/`` (``build`` refuses them), so the two kinds never share a key.
Every ``promote`` and ``drop`` is recorded on the feedback topic with who (``--by``) and why
(``--reason``); ``lithowatch calibrate --feedback`` uses those decisions as labels.
"""

from __future__ import annotations

import argparse
import getpass
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from shared.blobstore import LocalBlobStore
from shared.contracts import FeedbackRecord, Hashes, LibraryEntry, Topics, Vector
from shared.dataset import read_dataset
from shared.errors import ConfigError, ContractError, LithowatchError
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
        cmd = cmds.add_parser(
            action,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. The decision is recorded on {Topics.FEEDBACK} "
            "(who, why, when, with the entry's vector and labels), where lithowatch calibrate "
            "--feedback reads it as a label: promoted entries count as known, dropped ones as novel.",
        )
        cmd.add_argument("ids", nargs="+", metavar="ID")
        cmd.add_argument("--by", default=None, help="who decides (default: the OS user)")
        cmd.add_argument("--reason", default="", help="why, in a few words (kept with the decision)")
        cmd.set_defaults(func=cmd_promote if action == "promote" else cmd_drop)
    snap = cmds.add_parser("snapshot", help="replay the topic and write a FAISS snapshot")
    snap.add_argument("--out", required=True, type=Path)
    snap.set_defaults(func=cmd_snapshot)
    register_reembed(cmds)


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
                nm_per_px=item.nm_per_px,
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
    decisions = feedback_records(
        [latest[i][0] for i in ids], "promoted" if promote else "dropped", reviewer(args.by), args.reason
    )
    publish_feedback(settings, decisions)  # first: a decision that took effect is always on record
    publish_entries(settings, updates)
    print(
        f"{'promoted' if promote else 'dropped'} {len(updates)} entries "
        f"(by {decisions[0].by}; recorded on {Topics.FEEDBACK})"
    )
    return 0


def reviewer(given: str | None) -> str:
    """Who decides: ``--by``, else the OS user."""
    if given is not None and given.strip():
        return given.strip()
    try:
        return getpass.getuser()
    except (OSError, KeyError) as exc:  # no login name (a container without a passwd entry)
        raise ConfigError("cannot tell who you are from the OS: give --by NAME") from exc


def feedback_records(
    entries: Sequence[LibraryEntry], decision: Literal["promoted", "dropped"], by: str, reason: str
) -> list[FeedbackRecord]:
    """One reviewer's decision on each entry, with the entry as it was."""
    return [
        FeedbackRecord(
            entry_id=entry.entry_id,
            decision=decision,
            by=by,
            reason=reason,
            model_version=entry.model_version,
            status=entry.status,
            vector=entry.vector,
            labels=entry.labels,
            alert_id=entry.alert_id,
        )
        for entry in entries
    ]


def publish_feedback(settings: CommonSettings, records: Sequence[FeedbackRecord]) -> None:
    """The decisions onto the feedback topic, keyed by entry id; waits until all are acknowledged."""
    producer = make_producer(settings, client_id="lithowatch-library")
    try:
        futures = [
            producer.send(Topics.FEEDBACK, key=r.entry_id.encode(), value=r.model_dump_json().encode())
            for r in records
        ]
        producer.flush(timeout=120)
        for future in futures:
            future.get(timeout=60)
    finally:
        producer.close(timeout=5)


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


def calibrate_command(
    dataset: Path | str, model_dir: Path, thresholds_out: Path, extra: Sequence[str] = ()
) -> list[str]:
    return [
        "calibrate",
        "--dataset",
        str(dataset),
        "--model",
        str(model_dir),
        "--out",
        str(thresholds_out),
        *extra,
    ]


def run_calibrate(argv: list[str]) -> int:
    """``lithowatch calibrate`` with these arguments, in this process (the existing calibration)."""
    from toolkit.calibration import cli as calibration_cli

    parser = argparse.ArgumentParser(prog="lithowatch")
    calibration_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def register_reembed(cmds: argparse._SubParsersAction) -> None:
    """``library reembed``: see :mod:`services.novelty.reembed`."""
    cmd = cmds.add_parser(
        "reembed",
        help="re-embed the library with a new model into that model's library topic (blue/green)",
        description="Embed every entry of the library now served again with a new model, from its "
        "stored images, into the new model's own library topic while the old one keeps serving; "
        "entries that cannot be embedded are listed, never dropped silently. Run it again to "
        "bring the new library up to date.",
    )
    cmd.add_argument("--model", required=True, type=Path, help="the new encoder checkpoint directory")
    cmd.add_argument(
        "--from-topic", default=Topics.LIBRARY, help="library topic to re-embed (default: %(default)s)"
    )
    cmd.add_argument("--to-topic", default=None, help="default: the new model's library topic")
    cmd.add_argument(
        "--from-model", default=None, help="model of the entries to re-embed (default: the library's)"
    )
    cmd.add_argument("--device", default="auto")
    cmd.add_argument("--batch-size", type=int, default=64)
    cmd.add_argument(
        "--nm-per-px", type=float, default=None, help="scale of entries that do not record theirs"
    )
    cmd.add_argument(
        "--left-out",
        type=Path,
        default=Path("reembed-left-out.jsonl"),
        help="where the left-out entries are listed",
    )
    cmd.add_argument(
        "--calibrate",
        type=Path,
        default=None,
        metavar="DATASET",
        help="labelled data set to calibrate the new model's thresholds on",
    )
    cmd.add_argument("--calibrate-args", default="", help="more lithowatch calibrate arguments, quoted")
    cmd.add_argument("--thresholds-out", type=Path, default=None, help="default: thresholds-<model>.json")
    cmd.set_defaults(func=cmd_reembed)


def cmd_reembed(args: argparse.Namespace) -> int:
    from services.novelty import reembed  # FAISS and torch: only for this command
    from shared.index import model_slug
    from shared.model import load_encoder

    settings = load_settings(CommonSettings, args.settings_file)
    encoder = load_encoder(args.model, device=args.device)
    report = reembed.run_reembed(
        settings,
        encoder,
        source_topic=args.from_topic,
        target_topic=args.to_topic,
        source_model=args.from_model,
        batch_size=args.batch_size,
        default_nm_per_px=args.nm_per_px,
    )
    print(
        f"library of model {report.model_version} ({report.dim}-d) on {report.target_topic}: "
        f"{report.embedded} embedded, {report.republished} republished, {report.unchanged} unchanged, "
        f"{report.dropped} dropped, {len(report.left_out)} left out of {report.source_entries} entries "
        f"of {report.source_topic} (model {report.source_model}) in {report.seconds:.1f} s"
    )
    status = 0
    if report.left_out:
        reembed.write_left_out(args.left_out, report.left_out)
        print(f"LEFT OUT {len(report.left_out)} entries ({report.reasons()}), listed in {args.left_out}:")
        for item in report.left_out[: reembed.LEFT_OUT_SHOWN]:
            print(f"  {item.entry_id}: {item.reason}: {item.detail}")
        if len(report.left_out) > reembed.LEFT_OUT_SHOWN:
            print(f"  ... and {len(report.left_out) - reembed.LEFT_OUT_SHOWN} more")
        status = 1
    thresholds_out = args.thresholds_out or Path(f"thresholds-{model_slug(report.model_version)}.json")
    extra = shlex.split(args.calibrate_args)
    if args.calibrate is not None:
        try:
            run_calibrate(calibrate_command(args.calibrate, args.model, thresholds_out, extra))
        except LithowatchError as exc:
            raise ConfigError(f"calibrating the new model failed (its library is published): {exc}") from exc
        print(f"thresholds of model {report.model_version}: {thresholds_out}")
    else:
        command = shlex.join(
            ["lithowatch", *calibrate_command("LABELLED_DATASET", args.model, thresholds_out)]
        )
        print(f"thresholds: calibrate the new model on a labelled data set, e.g. {command}")
    print(
        "serve both (deploy/RUNBOOK.md, Model rollout): novelty with "
        f"LITHOWATCH_NOVELTY_LIBRARY_TOPICS={report.source_topic},{report.target_topic} "
        f"LITHOWATCH_NOVELTY_EXTRA_THRESHOLDS={thresholds_out}; "
        f"then embed with LITHOWATCH_MODEL_PATH={args.model}"
    )
    return status
