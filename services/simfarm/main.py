"""``lithowatch simfarm``: publish results to the results topic at a chosen rate."""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from kafka.errors import KafkaError
from tqdm import tqdm

from services.simfarm import NAME
from shared import metrics
from shared.blobstore import LocalBlobStore
from shared.contracts import SimResult, Topics
from shared.dataset import read_dataset
from shared.errors import ConfigError, DependencyUnavailable
from shared.kafka_io import make_producer
from shared.settings import CommonSettings, StageSettings, load_settings, metrics_port_for
from toolkit.litho import FAMILIES

log = logging.getLogger(f"lithowatch.{NAME}")


def _families(text: str) -> tuple[str, ...]:
    names = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    farm = sub.add_parser("simfarm", help="publish simulated results (generated or replayed) to Kafka")
    farm.add_argument("--dataset", default=None, help="replay this data set instead of generating")
    farm.add_argument("--count", type=int, default=0, help="results to publish (0: all / forever)")
    farm.add_argument("--rate", type=float, default=0.0, help="results per second (0: as fast as possible)")
    farm.add_argument("--families", type=_families, default=FAMILIES)
    farm.add_argument("--novel-families", type=_families, default=())
    farm.add_argument("--novel-fraction", type=float, default=0.0)
    farm.add_argument("--duplicate-fraction", type=float, default=0.0)
    farm.add_argument("--print-offset-px", type=float, default=0.0, help="random print misregistration")
    farm.add_argument("--defect-rate", type=float, default=0.0)
    farm.add_argument("--size", type=int, default=256)
    farm.add_argument("--nm-per-px", type=float, default=4.0)
    farm.add_argument("--seed", type=int, default=0)
    farm.add_argument("--job-id", default="simfarm")
    farm.add_argument("--quiet", action="store_true")
    farm.set_defaults(func=cmd_simfarm)


def results_for(args: argparse.Namespace, settings: CommonSettings) -> Iterator[SimResult]:
    from services.simfarm.core import FarmSettings, FarmStream, replay

    store = LocalBlobStore(settings.blob_root)
    if args.dataset:
        return replay(read_dataset(args.dataset), args.job_id, store, settings.inline_image_limit_bytes)
    try:
        farm_settings = FarmSettings(
            seed=args.seed,
            families=args.families,
            novel_families=args.novel_families,
            novel_fraction=args.novel_fraction,
            duplicate_fraction=args.duplicate_fraction,
            print_offset_px=args.print_offset_px,
            defect_rate=args.defect_rate,
            size_px=args.size,
            nm_per_px=args.nm_per_px,
            job_id=args.job_id,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid farm settings: {exc}") from exc
    return iter(FarmStream(farm_settings, store, settings.inline_image_limit_bytes))


def publish(
    results: Iterator[SimResult],
    settings: CommonSettings,
    count: int = 0,
    rate: float = 0.0,
    progress: bool = True,
) -> int:
    """Publish results at ``rate`` per second (0: as fast as possible); return how many."""
    producer = make_producer(settings, client_id=f"lithowatch-{NAME}")
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _stop) if in_main else None
    sent = 0
    begin = time.monotonic()
    bar = tqdm(total=count or None, unit="result", disable=not progress, desc=NAME)
    try:
        stream = itertools.islice(results, count) if count else results
        for result in stream:
            if stopping:
                break
            if rate > 0:
                delay = begin + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            result = result.model_copy(update={"produced_at": datetime.now(UTC)})
            key = result.result_id.encode()
            producer.send(
                Topics.RESULTS,
                key=key,
                value=result.model_dump_json().encode(),
                headers=[("result_id", key), ("produced_at", result.produced_at.isoformat().encode())],
            )
            sent += 1
            metrics.FARM_RESULTS.inc()
            bar.update(1)
            if sent % 50 == 0:
                bar.set_postfix(rate=f"{sent / max(1e-9, time.monotonic() - begin):.1f}/s")
        producer.flush(timeout=60)
    except KafkaError as exc:
        raise DependencyUnavailable(f"publishing failed: {exc}") from exc
    finally:
        bar.close()
        if in_main:
            signal.signal(signal.SIGINT, previous)
        producer.close(timeout=5)
    return sent


def start_metrics(settings: StageSettings) -> metrics.MetricsServer | None:
    """Serve the farm's counter for Prometheus; a busy port only costs the metrics."""
    port = metrics_port_for(settings, NAME)
    try:
        return metrics.MetricsServer(settings.metrics_host, port, lambda: True).start()
    except OSError as exc:
        log.warning("%s metrics not served on %s:%d: %s", NAME, settings.metrics_host, port, exc)
        return None


def cmd_simfarm(args: argparse.Namespace) -> int:
    settings = load_settings(StageSettings, args.settings_file)
    server = start_metrics(settings)
    begin = time.monotonic()
    try:
        sent = publish(results_for(args, settings), settings, args.count, args.rate, progress=not args.quiet)
    finally:
        if server is not None:
            server.stop()
    elapsed = time.monotonic() - begin
    print(f"published {sent} results in {elapsed:.1f} s ({sent / max(elapsed, 1e-9):.1f}/s)")
    return 0
