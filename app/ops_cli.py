"""Operational subcommands: ``topics``, ``tail``, ``alerts``, ``schemas`` (``up`` is in :mod:`app.up_cli`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from shared.contracts import (
    TOPIC_MODELS,
    AlertRecord,
    Contract,
    ExplanationRecord,
    Topics,
    VerdictRecord,
    json_schemas,
    model_for_topic,
)
from shared.display import terminal_safe
from shared.errors import ConfigError, ContractError
from shared.settings import CommonSettings, load_settings


def register(sub: argparse._SubParsersAction) -> None:
    topics = sub.add_parser("topics", help="list topics with end offsets and lag per consumer group")
    topics.set_defaults(func=cmd_topics)

    tail = sub.add_parser("tail", help="decode and print messages of a topic")
    tail.add_argument("topic", help=f"one of: {', '.join(Topics.all())}")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true")
    start.add_argument(
        "--offset", type=int, default=None, help="start at this offset of each chosen partition"
    )
    start.add_argument(
        "--group",
        default=None,
        help="start where this consumer group stands (its committed offsets): what it has yet to "
        "process; the group is only read, never joined or committed",
    )
    tail.add_argument(
        "--partition", type=int, action="append", default=None, help="only this partition (repeatable)"
    )
    tail.add_argument("--key", default=None, help="only messages with this key (a result id)")
    tail.add_argument("--meta", action="store_true", help="print partition, offset and key with each message")
    tail.add_argument("--max", type=int, default=0, help="stop after N messages (0: never)")
    tail.add_argument("--timeout", type=float, default=0.0, help="stop after N idle seconds (0: never)")
    tail.add_argument("--full", action="store_true", help="print inline image data too")
    tail.add_argument(
        "--json", action="store_true", help="verdicts as JSON like every other topic (default: one line each)"
    )
    tail.set_defaults(func=cmd_tail)

    alerts = sub.add_parser("alerts", help="tail novelty alerts with their neighbours and panel links")
    alerts.add_argument("--from-beginning", action="store_true")
    alerts.add_argument("--max", type=int, default=0, help="stop after N alerts (0: never)")
    alerts.add_argument("--timeout", type=float, default=0.0, help="stop after N idle seconds (0: never)")
    alerts.add_argument(
        "--panel-base-url",
        default="http://127.0.0.1:9105",
        help="where the explain service serves /panels/ (its metrics port)",
    )
    alerts.set_defaults(func=cmd_alerts)

    schemas = sub.add_parser("schemas", help="write (or --check) the JSON Schemas of every topic")
    schemas.add_argument("--out", type=Path, default=Path("schemas"))
    schemas.add_argument("--check", action="store_true", help="fail when the files differ from the models")
    schemas.set_defaults(func=cmd_schemas)


def schema_files() -> dict[str, str]:
    return {
        f"{topic}.schema.json": json.dumps(schema, indent=2, sort_keys=True) + "\n"
        for topic, schema in json_schemas().items()
    }


def cmd_schemas(args: argparse.Namespace) -> int:
    files = schema_files()
    if args.check:
        stale = [
            name
            for name, text in files.items()
            if not (args.out / name).is_file() or (args.out / name).read_text() != text
        ]
        if stale:
            raise ConfigError(f"schemas out of date: {', '.join(stale)} (run: lithowatch schemas)")
        print(f"{len(files)} schemas up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
    print(f"wrote {len(files)} schemas to {args.out}")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from kafka import TopicPartition

    from shared.kafka_io import committed_offsets, consumer_groups, make_admin, make_reader

    settings = load_settings(CommonSettings, args.settings_file)
    admin = make_admin(settings)
    consumer = make_reader(settings)
    try:
        names = sorted(t for t in admin.list_topics() if t.startswith("lithowatch."))
        ends: dict[Any, int] = {}
        for name in names:
            parts = consumer.partitions_for_topic(name) or set()
            tps = [TopicPartition(name, p) for p in sorted(parts)]
            ends.update(consumer.end_offsets(tps))
        groups = [g for g in consumer_groups(admin) if g.startswith("lithowatch-")]
        committed = {group: committed_offsets(admin, group) for group in groups}
        print(f"{'topic':<34} {'part':>4} {'end':>9}  lag by group")
        for tp in sorted(ends, key=lambda t: (t.topic, t.partition)):
            lags = [
                f"{g.removeprefix('lithowatch-')}={ends[tp] - committed[g][tp]}"
                for g in groups
                if tp in committed[g]
            ]
            print(f"{tp.topic:<34} {tp.partition:>4} {ends[tp]:>9}  {' '.join(lags)}")
    finally:
        consumer.close()
        admin.close()
    return 0


def _summarise(value: Any, full: bool) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if (
                not full
                and key in ("inline_b64", "b64", "value_b64")
                and isinstance(item, str)
                and len(item) > 40
            ):
                out[key] = f"<{len(item)} base64 chars>"
            else:
                out[key] = _summarise(item, full)
        return out
    if isinstance(value, list):
        return [_summarise(v, full) for v in value]
    return value


def cmd_tail(args: argparse.Namespace) -> int:
    from kafka import TopicPartition

    from shared.kafka_io import make_reader

    if args.topic not in TOPIC_MODELS:
        raise ConfigError(f"unknown topic {args.topic!r}; known: {', '.join(Topics.all())}")
    model = model_for_topic(args.topic)
    settings = load_settings(CommonSettings, args.settings_file)
    consumer = make_reader(settings)
    try:
        parts = consumer.partitions_for_topic(args.topic)
        if not parts:
            raise ConfigError(f"topic {args.topic} does not exist on {settings.kafka_bootstrap}")
        chosen = sorted(parts) if not args.partition else sorted(set(args.partition))
        missing = sorted(set(chosen) - set(parts))
        if missing:
            raise ConfigError(f"topic {args.topic} has no partition {missing[0]} (it has {len(parts)})")
        tps = [TopicPartition(args.topic, p) for p in chosen]
        consumer.assign(tps)
        _seek_tail_start(consumer, tps, args, settings)
        key = args.key.encode() if args.key is not None else None
        seen = 0
        idle_since = time.monotonic()
        while True:
            polled = consumer.poll(timeout_ms=500)
            for records in polled.values():
                for record in records:
                    if key is not None and record.key != key:
                        continue
                    print(tail_line(record, model, args.full, args.meta, args.json), flush=True)
                    seen += 1
                    idle_since = time.monotonic()
                    if args.max and seen >= args.max:
                        return 0
            if args.timeout and time.monotonic() - idle_since > args.timeout:
                return 0
    finally:
        consumer.close()


def tail_line(record: Any, model: type[Contract], full: bool, meta: bool, as_json: bool = False) -> str:
    """One message as ``tail`` prints it: JSON (inline images summarised unless ``full``), a
    verdict as one readable line unless ``as_json``; ``meta``: its partition, offset and key too.
    Read as a tolerant reader would (fields of a newer minor version are left out)."""
    where = {"partition": record.partition, "offset": record.offset}
    where["key"] = record.key.decode(errors="replace") if record.key is not None else None
    try:
        if record.value is None:  # a tombstone (library drop)
            shown: dict[str, Any] = {"tombstone": True, "key": (record.key or b"").decode()}
        else:
            value = model.from_wire(record.value)
            if isinstance(value, VerdictRecord) and not as_json:
                prefix = f"[{where['partition']}/{where['offset']}] " if meta else ""
                return prefix + format_verdict(value)
            shown = _summarise(value.model_dump(mode="json"), full)
    except (ValueError, ContractError) as exc:
        shown = {"undecodable": str(exc)[:200], "offset": record.offset}
    if meta:
        shown = {"_meta": where, **shown}
    return json.dumps(shown, sort_keys=True)


def format_verdict(verdict: VerdictRecord) -> str:
    """A verdict as one line: what became of the result, the farm's ids, the alignment flag.

    Passed through :func:`terminal_safe` (ids, labels and errors come from messages)."""
    if verdict.outcome == "scored":
        relation = ">=" if verdict.decision != "known" else "<"
        what = (
            f"{verdict.decision} {verdict.novelty_score or 0.0:.3f} {relation} {verdict.threshold or 0.0:.3f}"
            f"  model {verdict.model_version}"
        )
        if verdict.alert_id:
            what += f"  alert {verdict.alert_id}"
        if verdict.provisional_of:
            what += f"  like alert {verdict.provisional_of}"
    elif verdict.outcome == "duplicate":
        what = f"of {verdict.duplicate_of} ({verdict.method}, {verdict.stage})"
    else:
        what = f"at {verdict.stage}: {verdict.reason}: {verdict.error[:120]}"
    parts = [f"{verdict.outcome.upper():<13} {verdict.result_id}  {what}"]
    if verdict.job_id:
        parts.append(f"job {verdict.job_id}")
    if verdict.clip_id:
        parts.append(f"clip {verdict.clip_id}")
    if "family" in verdict.labels:
        parts.append(f"family {verdict.labels['family']}")
    if verdict.alignment_flagged:
        parts.append(f"ALIGNMENT FLAGGED ({verdict.alignment_reason or 'no reason given'})")
    parts.append(f"at {verdict.decided_at:%Y-%m-%d %H:%M:%S}")
    return terminal_safe("  ".join(parts))


def _seek_tail_start(
    consumer: Any, tps: list[Any], args: argparse.Namespace, settings: CommonSettings
) -> None:
    """Position each partition: the beginning, an offset, a group's committed offsets, or the end."""
    if args.from_beginning:
        consumer.seek_to_beginning(*tps)
    elif args.offset is not None:
        if args.offset < 0:
            raise ConfigError(f"--offset must be 0 or more, got {args.offset}")
        for tp in tps:
            consumer.seek(tp, args.offset)
    elif args.group is not None:
        from shared.kafka_io import committed_offsets, make_admin

        admin = make_admin(settings)
        try:
            committed = committed_offsets(admin, args.group)
        finally:
            admin.close()
        if not any(tp in committed for tp in tps):
            raise ConfigError(f"group {args.group!r} has no committed offsets on {tps[0].topic}")
        for tp in tps:
            if tp in committed:
                consumer.seek(tp, committed[tp])
            else:
                consumer.seek_to_beginning(tp)
    else:
        consumer.seek_to_end(*tps)


def format_alert(alert: AlertRecord, explanation: ExplanationRecord | None, panel_base_url: str) -> str:
    """One alert as a few readable lines: what, how novel, nearest known results, the panel.

    Every line is passed through :func:`terminal_safe`: ids and labels come from messages and
    must not reach the terminal as escape sequences or forge extra lines."""
    family = alert.labels.get("family", "?")
    lines = [
        f"ALERT {alert.alert_id}  result {alert.result_id}  family {family}  "
        f"novelty {alert.novelty_score:.3f} >= {alert.threshold:.3f}  at {alert.raised_at:%Y-%m-%d %H:%M:%S}"
    ]
    for rank, neighbour in enumerate(alert.neighbours, start=1):
        tag = " (provisional)" if neighbour.provisional else ""
        lines.append(
            f"  #{rank} {neighbour.id}  similarity {neighbour.similarity:.3f}  "
            f"family {neighbour.labels.get('family', '?')}{tag}"
        )
    if explanation is not None and explanation.panel.uri is not None:
        key = explanation.panel.uri.removeprefix("blob://")
        lines.append(f"  panel {panel_base_url.rstrip('/')}/panels/{key}  ({explanation.panel.uri})")
    else:
        lines.append("  panel: not rendered yet")
    return "\n".join(terminal_safe(line) for line in lines)


def cmd_alerts(args: argparse.Namespace) -> int:
    from kafka import TopicPartition

    from shared.kafka_io import make_reader

    settings = load_settings(CommonSettings, args.settings_file)
    consumer = make_reader(settings)
    pending: dict[str, AlertRecord] = {}
    panels: dict[str, ExplanationRecord] = {}
    shown = 0
    try:
        tps = [
            TopicPartition(t, p)
            for t in (Topics.ALERTS, Topics.EXPLANATIONS)
            for p in sorted(consumer.partitions_for_topic(t) or [])
        ]
        if not tps:
            raise ConfigError(f"no alert topics on {settings.kafka_bootstrap}")
        consumer.assign(tps)
        if args.from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        idle_since = time.monotonic()
        while True:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    idle_since = time.monotonic()
                    if tp.topic == Topics.ALERTS:
                        alert = AlertRecord.from_wire(record.value)
                        pending[alert.alert_id] = alert
                    else:
                        explanation = ExplanationRecord.from_wire(record.value)
                        panels[explanation.alert_id] = explanation
            waited_out = args.timeout and time.monotonic() - idle_since > args.timeout
            for alert_id in [a for a in pending if a in panels or waited_out]:
                print(
                    format_alert(pending.pop(alert_id), panels.get(alert_id), args.panel_base_url), flush=True
                )
                shown += 1
                if args.max and shown >= args.max:
                    return 0
            if waited_out:
                return 0
    finally:
        consumer.close()
