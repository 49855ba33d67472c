"""``lithowatch library build|list|promote|drop|snapshot|reembed``: the reference set on its topic.

``build`` embeds a data set into reference entries, ``snapshot`` writes a FAISS snapshot of the
library topic, ``reembed`` re-embeds the library with a new model (:mod:`services.novelty.reembed`);
``list``, ``promote`` and ``drop`` curate a model's library and record each reviewer's decision
(:mod:`services.novelty.curation`, whose names are importable from here too).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from services.novelty.curation import add_library_choice, cmd_drop, cmd_list, cmd_promote
from services.novelty.curation import feedback_records as feedback_records
from services.novelty.curation import publish_entries as publish_entries
from services.novelty.curation import publish_feedback as publish_feedback
from services.novelty.curation import read_library as read_library
from services.novelty.curation import resolve_entry_id as resolve_entry_id
from services.novelty.curation import reviewer as reviewer
from shared.blobstore import LocalBlobStore
from shared.contracts import Hashes, LibraryEntry, Topics, Vector
from shared.dataset import read_dataset
from shared.errors import ConfigError, ContractError, LithowatchError
from shared.hashing import exact_digest
from shared.imageref import make_image_ref
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
    add_library_choice(listing)
    listing.set_defaults(func=cmd_list)
    for action, text in (
        ("promote", "make a provisional entry a reference entry"),
        ("drop", "remove an entry (tombstone)"),
    ):
        cmd = cmds.add_parser(
            action,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. The decision is recorded on {Topics.FEEDBACK} "
            "(who, why, when, with the entry's vector, model and labels), where lithowatch calibrate "
            "--feedback reads it as a label: promoted entries count as known, dropped ones as novel, "
            "each for the model of the library it was taken on.",
        )
        cmd.add_argument("ids", nargs="+", metavar="ID")
        add_library_choice(cmd)
        cmd.add_argument("--by", default=None, help="who decides (default: the OS user)")
        cmd.add_argument("--reason", default="", help="why, in a few words (kept with the decision)")
        cmd.set_defaults(func=cmd_promote if action == "promote" else cmd_drop)
    snap = cmds.add_parser("snapshot", help="replay the topic and write a FAISS snapshot")
    snap.add_argument("--out", required=True, type=Path)
    snap.set_defaults(func=cmd_snapshot)
    register_reembed(cmds)


def build_library(
    settings: CommonSettings,
    dataset_dir: Path,
    model_dir: Path,
    device: str = "auto",
    batch_size: int = 64,
    snapshot: Path | None = None,
) -> int:
    """Embed a data set and publish it as reference entries; return how many."""
    from shared.index import PROVISIONAL_ID_PREFIX
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
    publish_entries(settings, entries, progress=True)
    if snapshot is not None:  # of the whole topic, entries published before this build included
        snapshot_library(settings, snapshot)
    return len(entries)


def cmd_build(args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings, args.settings_file)
    count = build_library(settings, args.dataset, args.model, args.device, args.batch_size, args.snapshot)
    print(f"published {count} reference entries to {Topics.LIBRARY}")
    if args.snapshot is not None:
        print(f"snapshot written under {args.snapshot}")
    return 0


def snapshot_library(settings: CommonSettings, out: Path) -> tuple[Path, int, int]:
    """Replay the whole library topic into a FAISS snapshot under ``out``; return its path, the
    entries it holds and how many records were left out (as the service leaves them out)."""
    from services.novelty.library_feed import library_topic_id
    from shared.index import LibraryState

    latest = read_library(settings)
    records = sorted(latest.values(), key=lambda r: (r[1], r[2]))
    upserts = [r for r in records if r[0].op == "upsert" and r[0].vector is not None]
    if not upserts:
        raise ConfigError("the library topic holds no entries")
    first = upserts[0][0]
    assert first.vector is not None
    state = LibraryState(first.model_version, first.vector.dim)
    refused = 0
    for entry, partition, offset in records:
        try:
            state.apply(entry, partition, offset)
        except ContractError as exc:  # as the service does: logged, left out
            refused += 1
            print(f"left out: {exc}")
    path = state.snapshot(out, topic_id=library_topic_id(settings))
    return path, len(state), refused


def cmd_snapshot(args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings, args.settings_file)
    path, count, refused = snapshot_library(settings, args.out)
    print(f"snapshot of {count} entries ({refused} left out): {path}")
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
