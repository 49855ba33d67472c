"""Dedupe through the running stream: the SKY130 re-simulation set replayed into ``lithowatch up``.

What ``bench/dedupe_bench.py`` measures on the dedupe core in one process, measured here the
way a user sees it: the real-layout set of :mod:`bench.dedupe_real` (SKY130 window sets, each
the window and three re-simulations moved 1-16 px, plus windows moved 17-31 px) is written
as a data set with opaque ids and no labels, in shuffled order (a copy may arrive before its
original); ``lithowatch up --services dedupe --no-library`` runs the dedupe service on an
embedded broker and Redis; ``lithowatch simfarm --dataset`` replays the set into it; and the
unique and duplicates topics are read back with a librdkafka client (confluent-kafka).

Figures (one run, nothing asserted), beside each other:

- *final*: each result's last word on the topics: a late duplicate record
  (``details.late``, a result the stage passed on as unique and a later one showed to be a
  window of its layout) replaces the unique record it was given on arrival;
- *on arrival*: the unique and duplicate records as first written;

each as recall over the results to merge, false merges and far windows merged (see
:func:`bench.dedupe_bench.score_real`), and the stream's throughput.

    python bench/dedupe_stream.py --real-windows 50 --cache-dir /tmp/lw_cache
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.launcher import ChildProcess, wait_until
from bench.dedupe_bench import Verdicts, pattern_judge, score_real
from bench.dedupe_real import RealClip, load_or_generate_real
from shared.contracts import DuplicateRecord, Topics, UniqueResult
from shared.dataset import DatasetWriter
from shared.imaging import decode_image
from toolkit.litho.cell_rows import SKY130_HD_DIR

ROOT = Path(__file__).resolve().parents[1]
LITHOWATCH = [sys.executable, "-m", "app.cli"]


def opaque(result_id: str) -> str:
    return "r" + hashlib.sha256(result_id.encode()).hexdigest()[:16]


def write_dataset(stream: list[RealClip], folder: Path) -> None:
    """The stream in order, with opaque ids and no labels (what the stage sees of a blind set)."""
    with DatasetWriter(folder) as writer:
        for clip in stream:
            writer.add(opaque(clip.result_id), decode_image(clip.mask_png), decode_image(clip.print_png), 4.0)


def user_env(settings: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the commands run: none of this shell's ``LITHOWATCH_*`` settings, only
    ``settings`` (given with ``--setting``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITHOWATCH_")}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **(settings or {})}


def setting(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` of a ``LITHOWATCH_*`` setting (``--setting``)."""
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("LITHOWATCH_"):
        raise argparse.ArgumentTypeError(f"expected LITHOWATCH_NAME=VALUE, got {text!r}")
    return name, value


def read_decisions(bootstrap: str, wanted: set[str], timeout_seconds: float,
                   settle_seconds: float) -> tuple[list[Any], float]:
    """Records of the unique and duplicates topics from the beginning, read by a librdkafka consumer
    until every result in ``wanted`` has one and nothing new came for ``settle_seconds``; and when the
    last result was first accounted for (monotonic seconds)."""
    import confluent_kafka

    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-dedupe-stream",
                                         "enable.auto.commit": False})
    try:
        assignment = []
        for topic in (Topics.UNIQUE, Topics.DUPLICATES):
            partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
            assignment += [confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                           for p in partitions]
        consumer.assign(assignment)
        records: list[Any] = []
        seen: set[str] = set()
        deadline = time.monotonic() + timeout_seconds
        last_new = accounted_at = time.monotonic()
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                if wanted <= seen and time.monotonic() - last_new > settle_seconds:
                    break
                continue
            if message.error() is not None:
                raise RuntimeError(f"read failed: {message.error()}")
            records.append(message)
            last_new = time.monotonic()
            key = (message.key() or b"").decode()
            if key in wanted and key not in seen:
                seen.add(key)
                if wanted <= seen:
                    accounted_at = last_new
        missing = wanted - seen
        if missing:
            raise RuntimeError(f"{len(missing)} results got no decision within {timeout_seconds:.0f} s")
        return records, accounted_at
    finally:
        consumer.close()


def verdicts_of(records: list[Any], back: dict[str, str]) -> tuple[Verdicts, Verdicts, int]:
    """(final, on arrival, late records) as ``result_id -> duplicate_of`` in the bench's own ids."""
    arrival: Verdicts = {}
    final: Verdicts = {}
    late = 0
    for message in records:
        if message.topic() == Topics.UNIQUE:
            rid = back[UniqueResult.model_validate_json(message.value()).result_id]
            arrival.setdefault(rid, None)
            final.setdefault(rid, None)
            continue
        record = DuplicateRecord.model_validate_json(message.value())
        rid, of = back[record.result_id], back[record.duplicate_of]
        if record.details.get("late"):
            late += 1
            final[rid] = of
        else:
            arrival[rid] = of
            final[rid] = of if final.get(rid) is None else final[rid]
    return final, arrival, late


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-windows", type=int, default=50, help="window sets per layer")
    parser.add_argument("--far-share", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cells", type=Path, default=SKY130_HD_DIR)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".lithowatch" / "bench" / "dedupe")
    parser.add_argument("--rate", type=float, default=0.0, help="results per second (0: as fast as possible)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--setting", type=setting, action="append", default=[],
                        metavar="LITHOWATCH_NAME=VALUE",
                        help="a setting for the services (repeatable), e.g. "
                             "LITHOWATCH_DEDUPE_MIN_MATCHED_PX=1280")
    args = parser.parse_args()
    settings = dict(args.setting)

    clips = load_or_generate_real(args.cache_dir, args.real_windows, args.far_share, args.seed, args.cells)
    stream = list(clips)
    random.Random(args.seed).shuffle(stream)  # the order bench/dedupe_bench.py uses
    back = {opaque(c.result_id): c.result_id for c in stream}
    with tempfile.TemporaryDirectory(prefix="lw-dedupe-stream-") as tmp:
        folder = Path(tmp)
        write_dataset(stream, folder / "data")
        up = ChildProcess("up", [*LITHOWATCH, "up", "--services", "dedupe", "--no-library",
                                 "--partitions", str(args.partitions), "--workdir", str(folder / "run")],
                          folder / "up.log", env=user_env(settings), cwd=folder).start()
        try:
            if not wait_until(lambda: "services ready" in up.log_tail(40) or not up.alive(), 300):
                raise RuntimeError(f"lithowatch up did not get ready:\n{up.log_tail()}")
            if not up.alive():
                raise RuntimeError(f"lithowatch up stopped:\n{up.log_tail()}")
            env = {**user_env(), "LITHOWATCH_CONNECTION_FILE": str(folder / "run" / "connection.env")}
            bootstrap = next(line.split("=", 1)[1] for line in (folder / "run" / "connection.env").read_text()
                             .splitlines() if line.startswith("LITHOWATCH_KAFKA_BOOTSTRAP="))
            start = time.monotonic()
            farm = subprocess.run([*LITHOWATCH, "simfarm", "--dataset", str(folder / "data"), "--rate",
                                   str(args.rate), "--quiet", "--job-id", "blind"], cwd=folder, env=env,
                                  capture_output=True, text=True, timeout=args.timeout, check=False)
            if farm.returncode != 0:
                raise RuntimeError(f"simfarm failed: {farm.stderr[-2000:]}")
            records, accounted_at = read_decisions(bootstrap, set(back), args.timeout, settle_seconds=10.0)
        finally:
            up.stop(timeout_seconds=60)
    final, arrival, late = verdicts_of(records, back)
    seconds = accounted_at - start
    judge = pattern_judge(args.seed, args.cells)
    rows = [score_real("dedupe service, final", stream, final, seconds, judge),
            score_real("dedupe service, on arrival", stream, arrival, seconds, judge)]
    print(f"\n{len(stream)} results replayed through lithowatch up --services dedupe ({args.partitions} "
          f"partitions; settings: {' '.join(f'{k}={v}' for k, v in settings.items()) or 'the defaults'}), "
          f"read back with librdkafka: {len(records)} records, {late} late duplicates; "
          f"every result decided {seconds:.1f} s after the replay began "
          f"({len(stream) / seconds:.1f} results/s, replay included; the machine was shared with other work)")
    print(f"{'':32s} {'recall':>8s} {'false merges':>12s} {'same pattern':>12s} "
          f"{'far merged (> 16 px)':>21s}")
    for r in rows:
        print(f"{r.name:32s} {r.recall:8.4f} {r.false_merges:12d} {r.same_pattern:12d} "
              f"{r.far_merged:>8d} / {r.far:<3d} ({r.far_beyond:3d})")
    print(f"(recall over {rows[0].resimulations} results to merge, counted as in bench/dedupe_bench.py)")
    by_id = {c.result_id: c for c in stream}
    for message in records:  # every merge between window sets whose layouts differ, with what was compared
        if message.topic() != Topics.DUPLICATES:
            continue
        record = DuplicateRecord.model_validate_json(message.value())
        a, b = by_id[back[record.duplicate_of]], by_id[back[record.result_id]]
        if a.group.removesuffix("-far") != b.group.removesuffix("-far") and not judge(a, b):
            print(f"false merge: {b.result_id} into {a.result_id} ({record.details})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
