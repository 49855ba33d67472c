"""Prometheus metrics shared by every service, and the metrics/health HTTP server.

Metric names follow Prometheus' naming guide; labels are low-cardinality only
(``stage``, ``outcome``, ``reason``, ``method``, ``decision``, ``topic``, ``partition``,
``model_version``: one or two live at a time, ``statistic``).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlparse

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from shared.http_server import GuardedHTTPServer, PrefetchedRequestHandler, ServerLimits

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# novelty_score = 1 - cosine similarity: fine steps where known results sit, coarse where novel ones do
SCORE_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05)
SCORE_BUCKETS += (0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)
SIMILARITY_BUCKETS = tuple(round(1.0 - b, 4) for b in reversed(SCORE_BUCKETS))

STAGE_LATENCY = Histogram(
    "lithowatch_stage_latency_seconds",
    "Processing time per message in a stage",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
END_TO_END_LATENCY = Histogram(
    "lithowatch_end_to_end_latency_seconds",
    "Time from the farm's produced_at to this stage's output",
    ["stage"],
    buckets=E2E_BUCKETS,
)
MESSAGES = Counter("lithowatch_messages_total", "Messages handled, by outcome", ["stage", "outcome"])
BATCH_SIZE = Histogram(
    "lithowatch_batch_size", "Messages per processed batch", ["stage"], buckets=BATCH_BUCKETS
)
DLQ = Counter("lithowatch_dlq_total", "Messages sent to the dead-letter queue", ["stage", "reason"])
CONSUMER_LAG = Gauge(
    "lithowatch_consumer_lag", "Messages behind the log end", ["stage", "topic", "partition"]
)
STAGE_UP = Gauge("lithowatch_stage_up", "1 while the stage is consuming", ["stage"])
DUPLICATES = Counter("lithowatch_duplicates_total", "Duplicates found, by method", ["method"])
NOVELTY_DECISIONS = Counter("lithowatch_novelty_decisions_total", "Novelty decisions", ["decision"])
NOVELTY_SCORE = Histogram(
    "lithowatch_novelty_score",
    "Novelty score of each scored result (1 - cosine similarity to the nearest reference entry)",
    ["model_version"],
    buckets=SCORE_BUCKETS,
)
NEIGHBOUR_SIMILARITY = Histogram(
    "lithowatch_novelty_neighbour_similarity",
    "Cosine similarity of each scored result to its nearest library entry (reference or provisional)",
    ["model_version"],
    buckets=SIMILARITY_BUCKETS,
)
NOVELTY_DRIFT = Gauge(
    "lithowatch_novelty_drift",
    "Drift of the last window of novelty scores from the calibration reference (psi, ks)",
    ["model_version", "statistic"],
)
ALERTS = Counter("lithowatch_alerts_total", "Novelty alerts raised")
INDEX_SIZE = Gauge("lithowatch_index_size", "Vectors in the novelty index")
LIBRARY_PROVISIONAL = Gauge("lithowatch_library_provisional", "Provisional library entries")
EMBED_RATE = Gauge("lithowatch_embed_images_per_second", "Embedder throughput over the last batches")
EMBED_BUSY = Gauge("lithowatch_embed_busy_ratio", "Fraction of wall time the encoder is running")
EMBED_DEVICE = Gauge("lithowatch_embed_device_info", "Device the encoder runs on", ["device"])
CONFIRMATIONS = Counter(
    "lithowatch_confirmations_total",
    "Hybrid duplicate confirmations, by path and outcome",
    ["path", "outcome"],
)
FARM_RESULTS = Counter("lithowatch_farm_results_total", "Results published by the farm emulator")
MODEL_INFO = Gauge(
    "lithowatch_model_info",
    "The encoder model a stage runs with: 1 for the live one",
    ["stage", "model_version"],
)
THRESHOLDS_INFO = Gauge(
    "lithowatch_thresholds_info",
    "The thresholds the novelty stage applies: 1 for the live ones (model, file digest, method)",
    ["model_version", "digest", "method"],
)


def set_info(gauge: Gauge, **labels: str) -> None:
    """Make ``labels`` the one live series of an info gauge (a process runs one model at a time)."""
    gauge.clear()
    gauge.labels(**labels).set(1)
DEDUPE_BAND_TRIMMED = Counter(
    "lithowatch_dedupe_band_members_trimmed_total",
    "Oldest members dropped from full dedupe band sets (near duplicates of them are no longer found)",
)
BLOBS_REMOVED = Counter("lithowatch_blobs_removed_total", "Blobs removed from the blob store by collection")
LIBRARY_EVENTS = Counter(
    "lithowatch_library_events_total",
    "Novelty library upkeep: provisional entries evicted over the bound, snapshots refused at restore",
    ["event"],
)

Route = Callable[[str], tuple[int, str, bytes]]
"""A read-only page: called with the request path, returns (status, content type, body).
A route registered under a key ending in ``/`` serves every path below it."""


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` (ready: consuming), ``/livez`` (alive: the process's loop
    turns, whether or not it consumes) and optional extra read-only routes.

    Idle and slow clients are dropped and the number of requests answered at once is bounded
    (:mod:`shared.http_server`), so Prometheus and the kubelet's probe still get through while
    thousands of idle connections are open.
    """

    def __init__(
        self,
        host: str,
        port: int,
        healthy: Callable[[], bool],
        routes: dict[str, Route] | None = None,
        registry: CollectorRegistry = REGISTRY,
        limits: ServerLimits | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        self._healthy = healthy
        self._alive = alive or (lambda: True)
        self._routes = dict(routes or {})
        self._registry = registry
        server = self

        class Handler(PrefetchedRequestHandler):
            def do_GET(self) -> None:
                path = urlparse(self.path).path
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server._registry))
                elif path == "/healthz":
                    ok = server._healthy()
                    self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"not ready\n")
                elif path == "/livez":
                    ok = server._alive()
                    self._send(200 if ok else 503, "text/plain", b"alive\n" if ok else b"wedged\n")
                elif (route := server._find(path)) is not None:
                    try:
                        status, content_type, body = route(path)
                    except Exception as exc:  # a broken page must not kill the service
                        status, content_type, body = 500, "text/plain", f"error: {exc}\n".encode()
                    self._send(status, content_type, body)
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = GuardedHTTPServer((host, port), Handler, limits)
        self.port = int(self._httpd.server_address[1])

    def _find(self, path: str) -> Route | None:
        if path in self._routes:
            return self._routes[path]
        for prefix, route in self._routes.items():
            if prefix.endswith("/") and path.startswith(prefix):
                return route
        return None

    def add_route(self, path: str, route: Route) -> None:
        self._routes[path] = route

    def start(self) -> MetricsServer:
        self._httpd.start(name="metrics")
        return self

    def stop(self) -> None:
        self._httpd.stop()
