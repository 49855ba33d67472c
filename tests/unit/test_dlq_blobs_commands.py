"""``lithowatch dlq`` (selection, terminal-safe lines, replay plans) and ``lithowatch blobs gc``,
without a broker: DLQ records are built here, the producer is a fake."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError

from app.cli import main as cli_main
from app.dlq_cli import (
    REPLAY_HEADER,
    DeadLetter,
    Selection,
    decode_dead_letters,
    letter_line,
    parse_since,
    plan_replays,
    produce_replays,
    select,
    summary_lines,
)
from shared.blobstore import LocalBlobStore
from shared.contracts import DLQRecord, Topics
from shared.display import terminal_safe
from shared.errors import ConfigError, DependencyUnavailable
from shared.imaging import sha256_hex

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def dead(offset: int, *, stage: str = "dedupe", reason: str = "blob_missing", result_id: str = "r1",
         value: bytes = b'{"x": 1}', uri: str | None = None, failed_at: datetime = NOW,
         error: str = "blob not found", source_offset: int | None = None,
         headers: dict[str, str] | None = None) -> DeadLetter:
    record = DLQRecord(
        stage=stage, reason=reason, error=error, topic=Topics.RESULTS, partition=1,
        offset=offset if source_offset is None else source_offset,
        key_b64=base64.b64encode(result_id.encode()).decode(),
        value_b64=None if uri else base64.b64encode(value).decode(), value_uri=uri,
        value_bytes=len(value), result_id=result_id,
        headers={"result_id": result_id} if headers is None else headers, failed_at=failed_at,
    )
    return DeadLetter(record, 0, offset)


def test_since_takes_ages_and_iso_times() -> None:
    assert parse_since("30m", NOW) == NOW - timedelta(minutes=30)
    assert parse_since("2d", NOW) == NOW - timedelta(days=2)
    assert parse_since("1.5h", NOW) == NOW - timedelta(minutes=90)
    assert parse_since("2026-04-30T10:00:00Z", NOW) == datetime(2026, 4, 30, 10, tzinfo=UTC)
    assert parse_since("2026-04-30T10:00:00", NOW) == datetime(2026, 4, 30, 10, tzinfo=UTC)  # UTC
    assert parse_since("2026-04-30", NOW) == datetime(2026, 4, 30, tzinfo=UTC)
    with pytest.raises(ConfigError):
        parse_since("yesterday", NOW)


def test_dead_letters_are_decoded_and_selected() -> None:
    letters = [dead(0), dead(1, stage="align", reason="no_registration", result_id="r2"),
               dead(2, reason="image_digest", result_id="r3", failed_at=NOW - timedelta(days=3))]
    kafka_records = [SimpleNamespace(partition=0, offset=d.dlq_offset,
                                     value=d.record.model_dump_json().encode()) for d in letters]
    kafka_records.append(SimpleNamespace(partition=2, offset=7, value=b"not json"))
    read = decode_dead_letters(kafka_records)
    assert [d.record.result_id for d in read.letters] == ["r1", "r2", "r3"]
    assert len(read.undecodable) == 1 and read.undecodable[0].startswith("2/7: ")

    def ids(selection: Selection) -> list[str | None]:
        return [d.record.result_id for d in select(read.letters, selection)]

    assert ids(Selection()) == ["r1", "r2", "r3"]
    assert ids(Selection(stages=frozenset({"dedupe"}))) == ["r1", "r3"]
    assert ids(Selection(reasons=frozenset({"blob_missing", "no_registration"}))) == ["r1", "r2"]
    assert ids(Selection(result_ids=frozenset({"r3"}))) == ["r3"]
    assert ids(Selection(since=NOW - timedelta(days=1))) == ["r1", "r2"]


def test_lines_are_terminal_safe() -> None:
    assert terminal_safe("ok text") == "ok text"
    assert terminal_safe("a\x1b[2Jb\nc\rd\x07e\u202ef\x9b") == "a\\x1b[2Jb\\nc\\rd\\x07e\\u202ef\\x9b"
    letter = dead(4, error="boom\n2026-01-01 FORGED LINE \x1b]0;title\x07", result_id="r-9")
    line = letter_line(letter)
    assert "\n" not in line and "\x1b" not in line and "\x07" not in line
    assert "dedupe  blob_missing  lithowatch.results.v1[1]@4  result r-9  dlq 0/4" in line
    assert line.endswith("error: boom\\n2026-01-01 FORGED LINE \\x1b]0;title\\x07")
    assert summary_lines([dead(0), dead(1), dead(2, reason="image\x1b")]) == [
        "stage   reason        count",
        "dedupe  blob_missing  2",
        "dedupe  image\\x1b     1",
    ]


def test_replay_plans_carry_value_key_and_headers(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    big = b'{"big": "' + b"x" * 1000 + b'"}'
    uri = store.put(big, sha256_hex(big), "bin")
    letters = [
        dead(0, result_id="inline"),
        dead(1, result_id="by-uri", value=big, uri=uri),
        dead(2, result_id="inline", source_offset=0, error="again",  # the same input dead-lettered twice,
             headers={"result_id": "inline", REPLAY_HEADER: "an earlier replay"}),  # after a replay
    ]
    replays, problems = plan_replays(letters, store)
    assert problems == []
    assert [(r.topic, r.key, r.letter.dlq_offset) for r in replays] == [
        (Topics.RESULTS, b"inline", 2), (Topics.RESULTS, b"by-uri", 1)]
    assert replays[0].value == b'{"x": 1}' and replays[1].value == big
    assert replays[0].headers == [("result_id", b"inline"), (REPLAY_HEADER, f"{Topics.DLQ}/0/2".encode())]
    assert dict(replays[1].headers)[REPLAY_HEADER] == f"{Topics.DLQ}/0/1".encode()


def test_replay_refuses_when_a_value_cannot_be_had(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    gone = b"collected value"
    uri = store.put(gone, sha256_hex(gone), "bin")
    store.resolve(uri).unlink()
    letters = [dead(0, result_id="fine"), dead(1, result_id="gone", value=gone, uri=uri),
               dead(2, result_id="big", value=b"y" * 500)]
    corrupt = dead(3, result_id="corrupt")
    letters.append(DeadLetter(corrupt.record.model_copy(update={"value_bytes": 3}), 0, 3))
    replays, problems = plan_replays(letters, store, max_message_bytes=400)
    assert [r.key for r in replays] == [b"fine"]
    assert len(problems) == 3
    assert "result gone" in problems[0] and "is gone" in problems[0] and uri in problems[0]
    assert "result big" in problems[1] and "message limit" in problems[1]
    assert "result corrupt" in problems[2] and "the record says 3" in problems[2]
    _, without_store = plan_replays([dead(1, value=gone, uri=uri)], None)
    assert "none is configured" in without_store[0]


class FakeProducer:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, Any, Any, Any]] = []
        self.fail = fail

    def send(self, topic: str, key: Any = None, value: Any = None, headers: Any = None) -> Any:
        self.sent.append((topic, key, value, headers))
        return SimpleNamespace(get=lambda timeout=None: None)

    def flush(self, timeout: float | None = None) -> None:
        if self.fail:
            raise KafkaTimeoutError("no broker")


def test_replays_are_produced_and_acknowledged(tmp_path: Path) -> None:
    replays, _ = plan_replays([dead(0, result_id="a"), dead(1, result_id="b")], None)
    producer = FakeProducer()
    assert produce_replays(producer, replays) == {Topics.RESULTS: 2}
    assert [(t, k) for t, k, _, _ in producer.sent] == [(Topics.RESULTS, b"a"), (Topics.RESULTS, b"b")]
    with pytest.raises(DependencyUnavailable):
        produce_replays(FakeProducer(fail=True), replays)


def test_replay_without_a_filter_is_refused(capfd: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["dlq", "replay"]) == 2
    assert "needs a filter" in capfd.readouterr().err


# -- blobs gc ---------------------------------------------------------------------------------------


def test_blobs_gc_prints_what_it_removes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LITHOWATCH_BLOB_ROOT", str(tmp_path / "blobs"))
    store = LocalBlobStore(tmp_path / "blobs")
    old = store.resolve(store.put(b"old", sha256_hex(b"old"), "bin"))
    young = store.resolve(store.put(b"young", sha256_hex(b"young"), "png"))
    os.utime(old, (1_000_000.0, 1_000_000.0))
    # no broker here: the library's images are not looked up (tests/integration/test_blobs_gc.py does)
    assert cli_main(["blobs", "gc", "--max-age-days", "30", "--dry-run", "--no-keep-library"]) == 0
    out = capfd.readouterr().out
    assert f"would remove {old.relative_to(store.root)}  3 B" in out and "would remove 1 files (3 B)" in out
    assert old.exists()
    assert cli_main(["blobs", "gc", "--max-age-days", "30", "--no-keep-library"]) == 0
    out = capfd.readouterr().out
    assert f"removed {old.relative_to(store.root)}" in out and "kept 1 blobs (5 B)" in out
    assert not old.exists() and young.exists()
    assert cli_main(["blobs", "gc", "--max-bytes", "0", "--no-keep-library"]) == 0
    assert not young.exists()
    assert cli_main(["blobs", "gc"]) == 2
    assert "needs --max-age-days and/or --max-bytes" in capfd.readouterr().err
