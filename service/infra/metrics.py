"""Prometheus metrics of the service and the `/metrics` endpoint.

Under gunicorn each worker is a process with its own counters. prometheus_client's
multiprocess mode has every worker write its values to mmap'd files in
PROMETHEUS_MULTIPROC_DIR, and `/metrics` merges the files of all the instance's workers at
scrape time (deploy/gunicorn.conf.py owns that directory). prometheus_client picks the mode
once, when it is first imported: without the variable (in-process tests, plain uvicorn)
values live in this process's default registry.

Labels are bounded: routes are templates (`/users/{username}`, never the raw path), and
anything answered before or without routing (404, 413) is `route="unmatched"`.

What every request counts (requests, latency, in-flight, inference) is tallied in memory by
`HOT_PATH` and folded into those files every `FLUSH_SECONDS` and before every scrape: a
file write costs microseconds under a lock, and a request would pay five of them. So other
workers' figures can lag a scrape by up to `FLUSH_SECONDS` (and a worker killed with -9
takes its last second of tallies along). Rare events (429s, auth failures, Redis errors)
are counted directly.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from typing import Any

import numpy as np
import numpy.typing as npt
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
from starlette.concurrency import run_in_threadpool

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


FLUSH_SECONDS = 1.0


class _Observations:
    """Observations of one histogram child, held until a flush."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, histogram: Any) -> None:
        self._bounds: list[float] = histogram._upper_bounds  # ends with +Inf
        self.counts = [0] * len(self._bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bucket whose bound is >= value, as Histogram.observe picks it.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.total += value

    def flush_into(self, child: Any) -> None:
        """Add the held observations to the child as that many `observe` calls would.

        prometheus_client has no public way to add n observations at once, so this writes
        its `_sum` and `_buckets` values (tests/infra/test_metrics.py checks the result
        against `observe`, so a library change fails there, not silently in production).
        """
        if self.total or any(self.counts):
            child._sum.inc(self.total)
            for index, count in enumerate(self.counts):
                if count:
                    child._buckets[index].inc(count)
            self.counts = [0] * len(self.counts)
            self.total = 0.0


class HotPathMetrics:
    """Per-process tallies of what every request counts (see the module docstring)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self._requests: dict[tuple[str, str, int], tuple[list[int], _Observations]] = {}
        self._inference = _Observations(INFERENCE_LATENCY)
        self._batch = _Observations(BATCH_SIZE)
        # Per class-name tuple (one per model served), the wins of each class.
        self._predictions: dict[tuple[str, ...], npt.NDArray[np.intp]] = {}

    def request_finished(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        entry = self._requests.get(key)
        if entry is None:
            entry = self._requests[key] = ([0], _Observations(HTTP_LATENCY))
        entry[0][0] += 1
        entry[1].observe(seconds)

    def inference(
        self, labels: tuple[str, ...], votes: npt.NDArray[np.intp], rows: int, seconds: float
    ) -> None:
        self._inference.observe(seconds)
        self._batch.observe(rows)
        tally = self._predictions.get(labels)
        if tally is None:
            self._predictions[labels] = votes.copy()
        else:
            tally += votes

    def flush(self) -> None:
        """Fold the tallies into the metrics (this process's multiprocess files)."""
        HTTP_IN_FLIGHT.set(self.in_flight)
        for (method, route, status), (count, latency) in self._requests.items():
            if count[0]:
                labels = (method, route, str(status))
                HTTP_REQUESTS.labels(*labels).inc(count[0])
                latency.flush_into(HTTP_LATENCY.labels(*labels))
                count[0] = 0
        self._inference.flush_into(INFERENCE_LATENCY)
        self._batch.flush_into(BATCH_SIZE)
        for classes, votes in self._predictions.items():
            for label, count_ in zip(classes, votes.tolist(), strict=True):
                if count_:
                    PREDICTIONS.labels(label).inc(count_)
        self._predictions.clear()

    async def flush_periodically(self) -> None:
        """Run in each worker's lifespan until cancelled; the last flush is the caller's."""
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self.flush()


HOT_PATH = HotPathMetrics()


def record_inference(
    labels: tuple[str, ...], votes: npt.NDArray[np.intp], rows: int, seconds: float
) -> None:
    """One inference call: `votes[i]` of its `rows` went to class `labels[i]`."""
    HOT_PATH.inference(labels, votes, rows, seconds)


def exposition() -> bytes:
    """The text format: in multiprocess mode, merged from every worker's files."""
    if not MULTIPROCESS:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """No auth and no rate limit: the load balancer denies it; scrapers reach each instance.
    This worker's tallies are folded in first (on the event loop, which owns them); the
    workers' files are read in the thread pool."""
    HOT_PATH.flush()
    return Response(await run_in_threadpool(exposition), media_type=CONTENT_TYPE_LATEST)
