"""One app per fuzz module, served in-process by schemathesis' ASGI client.

Schemathesis calls an ASGI app from its own event-loop thread and runs the app's lifespan
there, so the app, its Redis pool and every request of a module share that one loop. The
suite's function-scoped `app`/`client` fixtures live on pytest-asyncio's loop instead and
would be rebuilt per test, which Hypothesis' many examples per test cannot use.

Each module gets a fresh app on a Redis database of its own, with rate limits out of reach.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import hypothesis
import pytest
import redis as sync_redis
from fastapi import FastAPI
from schemathesis.python import asgi

from service.infra.config import Settings
from service.main import create_app
from tests.support.processes import RedisProcess
from tests.support.settings import make_settings

# A Redis database of its own: the rest of the suite flushes database 0 per test.
FUZZ_REDIS_DB = 9
# Limits far above anything a fuzz run sends: a 429 would hide what the route does.
UNLIMITED = "100000/second"
DEFAULT_EXAMPLES = 10


def fuzz_examples() -> int:
    """Examples per test: small in `make test`, large in `make fuzz` (FUZZ_EXAMPLES=2000)."""
    return max(1, int(os.environ.get("FUZZ_EXAMPLES", DEFAULT_EXAMPLES)))


def fuzz_hypothesis_settings(examples: int | None = None) -> hypothesis.settings:
    """Bounded and reproducible in `make test`; exploratory under FUZZ_EXAMPLES.

    The default run is derandomized, so CI sees the same inputs every time and cannot turn
    red by luck; a long run (FUZZ_EXAMPLES set) draws fresh inputs and keeps what failed in
    Hypothesis' example database (.hypothesis/, git-ignored) to replay first next time.
    There is no deadline: every example is a real request with Redis round trips, and the
    health checks about slow or large generation only flag what an API fuzzer does anyway.
    """
    exploratory = "FUZZ_EXAMPLES" in os.environ
    storage: dict[str, Any] = {} if exploratory else {"database": None}
    return hypothesis.settings(
        max_examples=examples if examples is not None else fuzz_examples(),
        deadline=None,
        derandomize=not exploratory,
        **storage,
        suppress_health_check=[
            hypothesis.HealthCheck.too_slow,
            hypothesis.HealthCheck.data_too_large,
            hypothesis.HealthCheck.large_base_example,
            hypothesis.HealthCheck.filter_too_much,
        ],
        print_blob=True,
    )


@pytest.fixture(scope="module")
def fuzz_settings(redis_server: RedisProcess, model_dir: Path) -> Settings:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{FUZZ_REDIS_DB}"
    return make_settings(
        url,
        model_dir,
        rate_limit_predict=UNLIMITED,
        rate_limit_login=UNLIMITED,
        rate_limit_login_ip=UNLIMITED,
        rate_limit_public=UNLIMITED,
        # A long run on a busy machine can stall a round trip past the 0.5 s default, and
        # the 503 that follows (correct behaviour) would be noise here.
        redis_socket_timeout=5.0,
    )


@pytest.fixture(scope="module")
def fuzz_redis(fuzz_settings: Settings) -> Iterator[sync_redis.Redis]:
    """A synchronous client on the fuzz database (tests run outside the app's loop)."""
    client = sync_redis.Redis.from_url(fuzz_settings.redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="module")
def fuzz_app(fuzz_settings: Settings, fuzz_redis: sync_redis.Redis) -> FastAPI:
    return create_app(fuzz_settings)


@pytest.fixture(scope="module")
def api(fuzz_app: FastAPI) -> Iterator[asgi.ASGIClient]:
    """A requests-style client on the app; entering it runs the lifespan (Redis, model,
    admin user) once for the module, and leaving the module shuts it down."""
    with asgi.get_client(cast(Any, fuzz_app)) as client:
        yield client
    asgi.shutdown_lifespans()
