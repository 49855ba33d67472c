"""Pass-through throughput of the stage runtime next to a bare kafka-python loop.

Both read the same N messages of ~10 KB from the results topic on the embedded
broker and write each to an output topic, committing after each flushed batch.
The runtime additionally validates every message against its contract and
re-serialises it, which is the overhead this prints as a ratio.

    python bench/runtime_bench.py --messages 5000
"""

from __future__ import annotations

import argparse
import base64
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from app.launcher import EmbeddedStack
from shared.contracts import ImageRef, SimResult, Topics
from shared.imaging import sha256_hex
from shared.runtime import StageRunner
from shared.settings import StageSettings
from shared.stage import ItemResult, Output, StageBase
from shared.testing import produce


def ten_kb_result(i: int, rng: np.random.Generator) -> SimResult:
    payload = rng.bytes(3600)
    ref = ImageRef(format="png", sha256=sha256_hex(payload), shape=(60, 60), dtype="uint8",
                   inline_b64=base64.b64encode(payload).decode())
    return SimResult(result_id=f"b{i:06d}", nm_per_px=4.0, mask=ref, simulated=ref,
                     produced_at=datetime.now(UTC))


class PassThrough(StageBase):
    name = "bench-passthrough"
    input_topic = Topics.RESULTS
    input_model = SimResult

    def __init__(self, out: str) -> None:
        self.out = out

    def process_batch(self, items: Sequence[SimResult]) -> list[ItemResult]:
        return [[Output(self.out, item, item.result_id)] for item in items]


def count_topic(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


def wait_count(bootstrap: str, topic: str, n: int, timeout: float = 600) -> float:
    begin = time.monotonic()
    while count_topic(bootstrap, topic) < n:
        if time.monotonic() - begin > timeout:
            raise TimeoutError(topic)
        time.sleep(0.05)
    return time.monotonic()


def bare_loop(bootstrap: str, out: str, n: int) -> float:
    consumer = KafkaConsumer(Topics.RESULTS, bootstrap_servers=bootstrap, group_id="bench-bare",
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             max_poll_interval_ms=8000, session_timeout_ms=8000)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    seen = 0
    start = None
    while seen < n:
        polled = consumer.poll(timeout_ms=200, max_records=256)
        if not polled:
            continue
        start = start or time.monotonic()
        offsets = {}
        for tp, records in polled.items():
            for record in records:
                producer.send(out, key=record.key, value=record.value, headers=record.headers)
            offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
            seen += len(records)
        producer.flush()
        consumer.commit(offsets)
    elapsed = time.monotonic() - (start or time.monotonic())
    consumer.close()
    producer.close()
    return n / elapsed


def runtime_loop(stack: EmbeddedStack, out: str, n: int, batch: int) -> float:
    settings = StageSettings(kafka_bootstrap=stack.bootstrap, batch_max_messages=batch, batch_max_wait_ms=20,
                             max_poll_interval_ms=8000, session_timeout_ms=8000)
    runner = StageRunner(PassThrough(out), settings)
    thread = threading.Thread(target=runner.run, kwargs={"install_signals": False, "serve_metrics": False})
    thread.start()
    while runner.processed == 0:
        time.sleep(0.005)
    start = time.monotonic()
    processed_at_start = runner.processed
    end = wait_count(stack.bootstrap, out, n)
    runner.request_stop()
    thread.join()
    return (n - processed_at_start) / (end - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    messages = [ten_kb_result(i, rng) for i in range(args.messages)]
    size = len(messages[0].model_dump_json())
    with EmbeddedStack(partitions=4) as stack:
        stack.create_topics(["bench.bare.out", "bench.runtime.out"])
        produce(stack.bootstrap, Topics.RESULTS, messages)
        bare = bare_loop(stack.bootstrap, "bench.bare.out", args.messages)
        runtime = runtime_loop(stack, "bench.runtime.out", args.messages, args.batch)
    print(f"messages: {args.messages} of {size} bytes, 4 partitions, batch {args.batch}")
    print(f"{'loop':<34}{'msgs/s':>10}")
    print(f"{'bare kafka-python consume->produce':<34}{bare:>10.0f}")
    print(f"{'lithowatch stage runtime':<34}{runtime:>10.0f}")
    print(f"runtime / bare: {runtime / bare:.2f}")


if __name__ == "__main__":
    main()
