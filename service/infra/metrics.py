"""Prometheus metrics of the service and the `/metrics` endpoint.

Under gunicorn each worker is a process with its own counters. prometheus_client's
multiprocess mode has every worker write its values to mmap'd files in
PROMETHEUS_MULTIPROC_DIR, and `/metrics` merges the files of all the instance's workers at
scrape time (deploy/gunicorn.conf.py owns that directory). prometheus_client picks the mode
once, when it is first imported: without the variable (in-process tests, plain uvicorn)
values live in this process's default registry.

Labels are bounded: routes are templates (`/users/{username}`, never the raw path), and
anything answered before or without routing (404, 413) is `route="unmatched"`.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

MULTIPROCESS = values.ValueClass is not values.MutexValue

UNMATCHED_ROUTE = "unmatched"

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered.", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time from receiving a request to the end of its response.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_IN_FLIGHT = Gauge(
    "http_requests_in_flight",
    "Requests being served now.",
    multiprocess_mode="livesum",
)
PREDICTIONS = Counter("predictions_total", "Predicted rows, by predicted class.", ["label"])
INFERENCE_LATENCY = Histogram(
    "inference_duration_seconds",
    "Inference time per prediction request (thread-pool hand-off included for large batches).",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
BATCH_SIZE = Histogram(
    "prediction_batch_size",
    "Rows per prediction request (1 for /predict).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 10000),
)
RATE_LIMITED = Counter(
    "rate_limit_rejections_total", "Requests refused with 429, by policy.", ["policy"]
)
AUTH_FAILURES = Counter(
    "auth_failures_total", "Refused credentials or tokens, by reason.", ["reason"]
)
REDIS_ERRORS = Counter("redis_errors_total", "Failed Redis calls, by error class.", ["error"])
UNREPLICATED_WRITES = Counter(
    "redis_unreplicated_revocations_total",
    "Revoking writes no replica acknowledged in time (they live on the primary only).",
)
REDIS_MEMORY_RATIO = Gauge(
    "redis_memory_used_ratio",
    "Redis used memory / maxmemory, as last seen by a readiness check (0: no maxmemory).",
    multiprocess_mode="mostrecent",
)
MODEL_INFO = Gauge(
    "model_info", "The model being served (value 1).", ["version"], multiprocess_mode="livemax"
)


def count_redis_error(exc: BaseException) -> None:
    REDIS_ERRORS.labels(type(exc).__name__).inc()


def record_inference(labels: Iterable[str], rows: int, seconds: float) -> None:
    INFERENCE_LATENCY.observe(seconds)
    BATCH_SIZE.observe(rows)
    for label, count in Tally(labels).items():
        PREDICTIONS.labels(label).inc(count)


def exposition() -> bytes:
    """The text format: in multiprocess mode, merged from every worker's files."""
    if not MULTIPROCESS:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """No auth and no rate limit: the load balancer denies it; scrapers reach each instance.
    A plain `def`, so reading the workers' files happens in the thread pool."""
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
