"""``lithowatch dlq list`` and ``lithowatch dlq replay``: see dead letters, and send them back.

Both read the DLQ topic from its beginning to its end as of the call (no consumer group,
nothing committed) and select records by stage, reason, result id and time of failure.

``list`` prints a count per (stage, reason), then one line per record: where the
original message was (topic, partition, offset), its result id, the reason and the
error, with every character a terminal would interpret (escape sequences, newlines)
shown as a visible escape: the error text and ids come from messages.

``replay`` re-produces each chosen record's original message (its value, inline in the
record or fetched from the blob store by ``value_uri``, its key and its headers, plus a
``lw-dlq-replay`` header naming the DLQ record) to the topic it was first read from,
where the stage picks it up again; do it once the cause is fixed (the missing blob
written, the library loaded...). Stages are idempotent on ``result_id``, so a record
replayed twice changes nothing downstream. A record seen several times in the DLQ (a
redelivery dead-lettered again) is replayed once. Nothing is produced when a chosen
record's value cannot be had (its blob collected, or corrupt): the command says which.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from shared.blobstore import LocalBlobStore
from shared.contracts import DLQRecord, Topics
from shared.display import terminal_safe
from shared.errors import BlobAccessError, ConfigError, DependencyUnavailable
from shared.settings import CommonSettings, load_settings

REPLAY_HEADER = "lw-dlq-replay"
_UNITS_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DLQ_READ_TIMEOUT_SECONDS = 120.0


def register(sub: argparse._SubParsersAction) -> None:
    dlq = sub.add_parser("dlq", help="list dead letters, or replay them to their original topic")
    verbs = dlq.add_subparsers(dest="dlq_command", metavar="VERB", required=True)
    listing = verbs.add_parser("list", help="dead letters by stage and reason, one line each",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_filters(listing)
    listing.add_argument("--summary", action="store_true", help="only the counts per stage and reason")
    listing.set_defaults(func=cmd_list)
    replay = verbs.add_parser("replay", help="re-produce chosen dead letters to their original topic",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_filters(replay)
    replay.add_argument("--all", action="store_true", help="every dead letter (no filter needed)")
    replay.add_argument("--dry-run", action="store_true", help="print what would be replayed, send nothing")
    replay.set_defaults(func=cmd_replay)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", action="append", default=[], help="only this stage (repeatable)")
    parser.add_argument("--reason", action="append", default=[], help="only this reason (repeatable)")
    parser.add_argument("--result-id", action="append", default=[], dest="result_ids",
                        help="only this result id (repeatable)")
    parser.add_argument("--since", default=None,
                        help="only records that failed since: an ISO time (UTC unless it says) "
                             "or an age (30m, 6h, 2d)")


# -- selection -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """A DLQ record and where it sits in the DLQ topic."""

    record: DLQRecord
    dlq_partition: int
    dlq_offset: int


@dataclass
class DlqRead:
    letters: list[DeadLetter] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)  # "partition/offset: why"


@dataclass(frozen=True)
class Selection:
    stages: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()
    result_ids: frozenset[str] = frozenset()
    since: datetime | None = None

    def is_empty(self) -> bool:
        return not (self.stages or self.reasons or self.result_ids or self.since)

    def matches(self, record: DLQRecord) -> bool:
        return ((not self.stages or record.stage in self.stages)
                and (not self.reasons or record.reason in self.reasons)
                and (not self.result_ids or record.result_id in self.result_ids)
                and (self.since is None or _aware(record.failed_at) >= self.since))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_since(text: str, now: datetime) -> datetime:
    """An ISO 8601 time (UTC unless it names a zone) or an age before ``now`` (``90s``, ``30m``, ``6h``,
    ``2d``, ``1w``)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS_SECONDS[match.group(2)])
    try:
        return _aware(datetime.fromisoformat(text.strip()))
    except ValueError as exc:
        raise ConfigError(f"--since {text!r} is neither an ISO time nor an age like 30m, 6h, 2d") from exc


def selection_from(args: argparse.Namespace, now: datetime | None = None) -> Selection:
    since = None if args.since is None else parse_since(args.since, now or datetime.now(UTC))
    return Selection(frozenset(args.stage), frozenset(args.reason), frozenset(args.result_ids), since)


def decode_dead_letters(records: Iterable[Any]) -> DlqRead:
    """DLQ records from Kafka records (``partition``, ``offset``, ``value``); undecodable ones noted."""
    out = DlqRead()
    for rec in records:
        try:
            letter = DLQRecord.from_wire(rec.value or b"")
        except (ValidationError, ValueError) as exc:
            out.undecodable.append(f"{rec.partition}/{rec.offset}: {str(exc).splitlines()[0][:200]}")
            continue
        out.letters.append(DeadLetter(letter, int(rec.partition), int(rec.offset)))
    return out


def read_dead_letters(settings: CommonSettings) -> DlqRead:
    from shared.kafka_io import read_to_end

    return decode_dead_letters(read_to_end(settings, Topics.DLQ, timeout_seconds=DLQ_READ_TIMEOUT_SECONDS))


def select(letters: Sequence[DeadLetter], selection: Selection) -> list[DeadLetter]:
    return [d for d in letters if selection.matches(d.record)]


# -- printing ------------------------------------------------------------------------------------


def summary_lines(letters: Sequence[DeadLetter]) -> list[str]:
    counts = Counter((d.record.stage, d.record.reason) for d in letters)
    if not counts:
        return []
    width_stage = max(5, *(len(terminal_safe(s)) for s, _ in counts))
    width_reason = max(6, *(len(terminal_safe(r)) for _, r in counts))
    lines = [f"{'stage':<{width_stage}}  {'reason':<{width_reason}}  count"]
    for (stage, reason), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"{terminal_safe(stage):<{width_stage}}  {terminal_safe(reason):<{width_reason}}  {n}")
    return lines


def _value_where(record: DLQRecord) -> str:
    if record.value_b64 is not None:
        return f"inline {record.value_bytes} B"
    if record.value_uri is not None:
        return f"{record.value_uri} ({record.value_bytes} B)"
    return "no value"


def letter_line(letter: DeadLetter) -> str:
    r = letter.record
    failed_at = _aware(r.failed_at).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = (f"{failed_at}  {r.stage}  {r.reason}  {r.topic}[{r.partition}]@{r.offset}  "
            f"result {r.result_id or '-'}  dlq {letter.dlq_partition}/{letter.dlq_offset}  "
            f"{_value_where(r)}  error: {r.error}")
    return terminal_safe(text)


def cmd_list(args: argparse.Namespace) -> int:
    selection = selection_from(args)
    settings = load_settings(CommonSettings, args.settings_file)
    read = read_dead_letters(settings)
    chosen = select(read.letters, selection)
    print(f"{len(chosen)} of {len(read.letters)} dead letters in {Topics.DLQ}")
    for line in summary_lines(chosen):
        print(line)
    if not args.summary:
        for letter in chosen:
            print(letter_line(letter))
    for note in read.undecodable:
        print(terminal_safe(f"undecodable DLQ record at {note}"))
    return 0


# -- replay --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    """One message to produce again."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    letter: DeadLetter


def _original_value(record: DLQRecord, store: LocalBlobStore | None) -> bytes:
    if record.value_b64 is not None:
        try:
            value = base64.b64decode(record.value_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"inline value is not valid base64: {exc}") from exc
    elif record.value_uri is not None:
        if store is None:
            raise ValueError(f"value is in the blob store ({record.value_uri}) and none is configured")
        try:
            value = store.get(record.value_uri)
        except BlobAccessError as exc:
            why = "is gone (collected, or never written)" if exc.reason == "blob_missing" else (
                f"cannot be read: {exc} ({exc.reason})")
            raise ValueError(f"value blob {record.value_uri} {why}") from exc
    else:
        raise ValueError("the record holds no value")
    if len(value) != record.value_bytes:
        raise ValueError(f"value has {len(value)} bytes, the record says {record.value_bytes}")
    return value


def plan_replays(letters: Sequence[DeadLetter], store: LocalBlobStore | None,
                 max_message_bytes: int | None = None) -> tuple[list[Replay], list[str]]:
    """The messages to produce (one per original record, from its latest dead letter) and, for each
    chosen record whose value cannot be had, why. Nothing should be produced while the second list
    is not empty."""
    latest: dict[tuple[str, int, int], DeadLetter] = {}
    for letter in letters:
        r = letter.record
        latest[(r.topic, r.partition, r.offset)] = letter  # the DLQ is read in order: the last one wins
    replays: list[Replay] = []
    problems: list[str] = []
    for (topic, partition, offset), letter in sorted(latest.items()):
        r = letter.record
        where = (f"{topic}[{partition}]@{offset} (result {r.result_id or '-'}, "
                 f"dlq {letter.dlq_partition}/{letter.dlq_offset})")
        try:
            value = _original_value(r, store)
            key = base64.b64decode(r.key_b64, validate=True) if r.key_b64 is not None else None
        except (ValueError, binascii.Error) as exc:
            problems.append(terminal_safe(f"{where}: {exc}"))
            continue
        headers = [(name, text.encode()) for name, text in r.headers.items() if name != REPLAY_HEADER]
        headers.append((REPLAY_HEADER, f"{Topics.DLQ}/{letter.dlq_partition}/{letter.dlq_offset}".encode()))
        size = len(value) + len(key or b"") + sum(len(k.encode()) + len(v) for k, v in headers)
        if max_message_bytes is not None and size > max_message_bytes:
            problems.append(terminal_safe(f"{where}: {size} bytes with key and headers, over the "
                                          f"{max_message_bytes}-byte message limit"))
            continue
        replays.append(Replay(topic, key, value, headers, letter))
    return replays, problems


def produce_replays(producer: Any, replays: Sequence[Replay], timeout_seconds: float = 60.0) -> Counter[str]:
    """Send every replay and wait for each acknowledgement; counts per topic."""
    from kafka.errors import KafkaError

    try:
        futures = [producer.send(r.topic, key=r.key, value=r.value, headers=r.headers) for r in replays]
        producer.flush(timeout=timeout_seconds)
        for future in futures:
            future.get(timeout=timeout_seconds)
    except KafkaError as exc:
        raise DependencyUnavailable(f"replay produce failed: {exc}") from exc
    return Counter(r.topic for r in replays)


def cmd_replay(args: argparse.Namespace) -> int:
    selection = selection_from(args)
    if selection.is_empty() and not args.all:
        raise ConfigError("dlq replay needs a filter (--stage, --reason, --result-id, --since) or --all")
    settings = load_settings(CommonSettings, args.settings_file)
    read = read_dead_letters(settings)
    chosen = select(read.letters, selection)
    store = LocalBlobStore(settings.blob_root, max_bytes=max(settings.kafka_max_message_bytes, 1 << 20))
    replays, problems = plan_replays(chosen, store, settings.kafka_max_message_bytes)
    if problems:
        for problem in problems:
            print(f"cannot replay {problem}")
        raise ConfigError(f"{len(problems)} of the chosen dead letters cannot be replayed; nothing was "
                          f"produced (narrow the selection, e.g. --result-id, to replay the others)")
    if args.dry_run:
        for replay in replays:
            print(f"would replay to {terminal_safe(replay.topic)}: {letter_line(replay.letter)}")
        print(f"would replay {len(replays)} messages ({len(chosen)} dead letters chosen)")
        return 0
    if not replays:
        print(f"nothing to replay ({len(read.letters)} dead letters, none chosen)")
        return 0
    from shared.kafka_io import make_producer

    producer = make_producer(settings, client_id="lithowatch-dlq-replay")
    try:
        per_topic = produce_replays(producer, replays)
    finally:
        producer.close(timeout=10)
    topics = ", ".join(f"{terminal_safe(t)} ({n})" for t, n in sorted(per_topic.items()))
    print(f"replayed {len(replays)} messages to {topics}")
    return 0
