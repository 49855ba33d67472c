"""Curating a model's reference library: ``lithowatch library list|promote|drop``.

Entries are addressed by entry id. A novel result's provisional entry has the id
``provisional/<result_id>``; ``promote`` and ``drop`` also accept the bare result id
of a provisional entry. Reference ids from a data set may not start with
``provisional/`` (``build`` refuses them), so the two kinds never share a key.

The commands act on the base library topic, or with ``--model VERSION`` (or
``--library-topic TOPIC``) on the library of another model, such as the one ``library
reembed`` wrote during a model switch (:mod:`shared.index.topics`); a library topic that does
not exist is a ConfigError naming those that do. Every ``promote`` and ``drop`` is recorded on
the feedback topic with who (``--by``) and why (``--reason``), and with the model version and
vector of the entry it was taken on, so ``lithowatch calibrate --feedback`` uses, for each
model, the decisions taken on that model's library.
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Sequence
from typing import Literal

from tqdm import tqdm

from shared.contracts import FeedbackRecord, LibraryEntry, Topics
from shared.errors import ConfigError, DependencyUnavailable
from shared.kafka_io import make_admin, make_producer, read_to_end
from shared.settings import CommonSettings, load_settings


def add_library_choice(cmd: argparse.ArgumentParser) -> None:
    """``--model VERSION`` / ``--library-topic TOPIC``: which model's library a command acts on."""
    which = cmd.add_mutually_exclusive_group()
    which.add_argument(
        "--model",
        default=None,
        metavar="VERSION",
        help="act on the library of this model version (the topic library reembed wrote for it, "
        f"{Topics.LIBRARY}.<model>, or {Topics.LIBRARY} when that holds the model); "
        f"default: {Topics.LIBRARY}",
    )
    which.add_argument(
        "--library-topic",
        default=None,
        metavar="TOPIC",
        help=f"act on this library topic (default: {Topics.LIBRARY})",
    )


def library_topics(settings: CommonSettings) -> list[str]:
    """The library topics on the broker: the base one first, then each model's."""
    from kafka.errors import KafkaError

    from shared.index.topics import BASE_LIBRARY_TOPIC, is_library_topic

    admin = make_admin(settings)
    try:
        names = admin.list_topics()
    except KafkaError as exc:
        raise DependencyUnavailable(f"cannot list the broker's topics: {exc}") from exc
    finally:
        admin.close()
    return sorted((t for t in names if is_library_topic(t)), key=lambda t: (t != BASE_LIBRARY_TOPIC, t))


LibraryView = dict[str, tuple[LibraryEntry, int, int]]


def open_library(
    settings: CommonSettings, model: str | None = None, topic: str | None = None
) -> tuple[str, LibraryView]:
    """The library topic a command acts on and its entries: ``topic`` as given, else the library
    of ``model`` (its own topic, or the base one when that holds entries of the model), else the
    base library. A ConfigError names the library topics that exist when there is no such one."""
    from shared.index.topics import BASE_LIBRARY_TOPIC, is_library_topic, library_topic

    existing = library_topics(settings)

    def absent(what: str) -> ConfigError:
        return ConfigError(f"{what}; library topics on the broker: {', '.join(existing) or 'none'}")

    if topic is not None:
        if not is_library_topic(topic):
            raise absent(
                f"{topic} is not a library topic ({BASE_LIBRARY_TOPIC} or {BASE_LIBRARY_TOPIC}.<model>)"
            )
        if topic not in existing:
            raise absent(f"library topic {topic} does not exist")
        return topic, read_library(settings, topic)
    if model is not None:
        own = library_topic(model)
        if own in existing:
            return own, read_library(settings, own)
        if BASE_LIBRARY_TOPIC in existing:
            base = read_library(settings, BASE_LIBRARY_TOPIC)
            if any(entry.model_version == model for entry, _, _ in base.values()):
                return BASE_LIBRARY_TOPIC, base
        raise absent(
            f"no library of model {model!r}: {own} does not exist and {BASE_LIBRARY_TOPIC} holds none of it"
        )
    if BASE_LIBRARY_TOPIC not in existing:
        raise absent(f"library topic {BASE_LIBRARY_TOPIC} does not exist (lithowatch library build makes it)")
    return BASE_LIBRARY_TOPIC, read_library(settings, BASE_LIBRARY_TOPIC)


def read_library(
    settings: CommonSettings, topic: str = Topics.LIBRARY, timeout_seconds: float = 60.0
) -> LibraryView:
    """The last record per entry id, with its partition and offset (a tombstone removes the entry)."""
    latest: LibraryView = {}
    for record in read_to_end(settings, topic, timeout_seconds):
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
    settings: CommonSettings, entries: list[LibraryEntry], progress: bool = False, topic: str = Topics.LIBRARY
) -> list[tuple[int, int]]:
    """Publish entries keyed by entry id; a delete is a tombstone (null value), which compaction
    removes with every earlier record of the entry."""
    producer = make_producer(settings, client_id="lithowatch-library")
    try:
        futures = [
            producer.send(
                topic,
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


def cmd_list(args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings, args.settings_file)
    topic, latest = open_library(settings, args.model, args.library_topic)
    shown = 0
    models: set[str] = set()
    for entry_id, (entry, _, _) in sorted(latest.items()):
        if entry.op == "delete" or (args.provisional and entry.status != "provisional"):
            continue
        family = entry.labels.get("family", "")
        print(f"{entry_id:<40} {entry.status:<12} {family!s:<12} {entry.alert_id or ''}")
        shown += 1
        models.add(entry.model_version)
    print(f"{shown} entries on {topic}" + (f" (model {', '.join(sorted(models))})" if models else ""))
    return 0


def resolve_entry_id(latest: LibraryView, given: str) -> str | None:
    """The live entry ``given`` names: its entry id, or the result id of a provisional entry."""
    from shared.index import provisional_entry_id  # FAISS loads only for commands that need it

    for entry_id in (given, provisional_entry_id(given)):
        if entry_id in latest and latest[entry_id][0].op != "delete":
            return entry_id
    return None


def _republish(args: argparse.Namespace, promote: bool) -> int:
    settings = load_settings(CommonSettings, args.settings_file)
    topic, latest = open_library(settings, args.model, args.library_topic)
    resolved = {given: resolve_entry_id(latest, given) for given in args.ids}
    missing = [given for given, entry_id in resolved.items() if entry_id is None]
    if missing:
        raise ConfigError(f"no such entries in library {topic}: {', '.join(missing)}")
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
    publish_entries(settings, updates, topic=topic)
    models = ", ".join(sorted({d.model_version for d in decisions}))
    print(
        f"{'promoted' if promote else 'dropped'} {len(updates)} entries of {topic} (model {models}; "
        f"by {decisions[0].by}; recorded on {Topics.FEEDBACK})"
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
