"""Shared fixtures: a real redis-server on a free port, a trained model, apps and clients.

Helpers live in tests/support/ (settings and credentials, logging in, processes).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from service.infra.config import Settings
from service.main import create_app
from tests.support.auth import bearer, create_user, login
from tests.support.processes import GunicornFactory, GunicornProcess, RedisProcess
from tests.support.settings import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    GENEROUS_RATES,
    USER_PASSWORD,
    make_settings,
    server_env,
    trained_model_dir,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return trained_model_dir()


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    """A client on the test Redis, emptied before each test."""
    client = Redis.from_url(redis_server.url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or parametrize) to change the app's settings."""
    return {}


@pytest.fixture
def settings(
    redis_server: RedisProcess,
    model_dir: Path,
    shared_secret: str,
    settings_overrides: dict[str, Any],
) -> Settings:
    return make_settings(
        redis_server.url, model_dir, **({"jwt_secret": shared_secret} | settings_overrides)
    )


@pytest.fixture
async def app(settings: Settings, redis: Redis) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> str:
    """How `client` reaches the app: in-process by default; see
    `tests.support.processes.BOTH_TRANSPORTS`."""
    kind: str = getattr(request, "param", "asgi")
    return kind


@pytest.fixture
async def client(
    app: FastAPI, transport: str, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    if transport == "gunicorn":
        server: GunicornProcess = request.getfixturevalue("http_server")
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            yield http
        return
    asgi = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=asgi, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def admin_tokens(client: httpx.AsyncClient) -> dict[str, Any]:
    return await login(client, ADMIN_USERNAME, ADMIN_PASSWORD)


@pytest.fixture
async def admin_headers(admin_tokens: dict[str, Any]) -> dict[str, str]:
    return bearer(admin_tokens["access_token"])


@pytest.fixture
async def user_tokens(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> dict[str, Any]:
    await create_user(client, admin_headers, "alice")
    return await login(client, "alice", USER_PASSWORD)


@pytest.fixture
async def user_headers(user_tokens: dict[str, Any]) -> dict[str, str]:
    return bearer(user_tokens["access_token"])


# Real servers: gunicorn with the project's config and uvicorn workers.


@pytest.fixture(scope="module")
def shared_secret() -> str:
    return secrets.token_urlsafe(48)


@pytest.fixture(scope="module")
def gunicorn_factory(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, shared_secret: str
) -> Iterator[GunicornFactory]:
    """Start gunicorn instances (stopped at the end of the module) with extra environment."""
    started: list[GunicornProcess] = []
    workdir = tmp_path_factory.mktemp("gunicorn")

    def start(redis_url: str, **env: str) -> GunicornProcess:
        values = {
            **server_env(),
            "REDIS_URL": redis_url,
            "MODEL_DIR": str(model_dir),
            "JWT_SECRET": shared_secret,
            "INSTANCE_NAME": f"test-{len(started)}",
            **env,
        }
        server = GunicornProcess(values, workdir).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A Redis of this module's own, so stopping or flushing it disturbs no other test."""
    server = RedisProcess(tmp_path_factory.mktemp("redis-serving"), appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http_server(gunicorn_factory: GunicornFactory, redis_server: RedisProcess) -> GunicornProcess:
    """gunicorn configured like `make_settings`, on the session Redis: the twin of `app`."""
    rates = {name.upper(): rate for name, rate in GENEROUS_RATES.items()}
    return gunicorn_factory(redis_server.url, **rates)
