"""Shared fixtures: a real redis-server on a free port, a trained model, apps and clients."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from service.core.config import Settings
from service.main import create_app
from service.ml.train import train
from tests.support.processes import GunicornProcess, RedisProcess

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin-password-for-tests"
USER_PASSWORD = "user-password-for-tests"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    train(out)
    return out


def make_settings(redis_url: str, model_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: never read the developer's .env; cheap Argon2 parameters."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "model_dir": model_dir,
        "jwt_secret": secrets.token_urlsafe(48),
        "admin_username": ADMIN_USERNAME,
        "admin_password": ADMIN_PASSWORD,
        "argon2_time_cost": 1,
        "argon2_memory_cost_kib": 1024,
        "argon2_parallelism": 1,
        "rate_limit_predict": "1000/minute",
        "rate_limit_login": "1000/minute",
        "rate_limit_login_ip": "1000/minute",
        "rate_limit_public": "1000/minute",
        "log_format": "text",
        # Generous for a busy CI machine; the 0.5 s production default is tested over gunicorn.
        "redis_socket_timeout": 2.0,
    } | overrides
    return Settings(_env_file=None, **values)


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
    """How `client` reaches the app: in-process by default; see BOTH_TRANSPORTS."""
    kind: str = getattr(request, "param", "asgi")
    return kind


# Run a test both in-process and over real HTTP against gunicorn (same Redis, same secret).
BOTH_TRANSPORTS = pytest.mark.parametrize("transport", ["asgi", "gunicorn"], indirect=True)


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


async def login(client: httpx.AsyncClient, username: str, password: str) -> dict[str, Any]:
    response = await client.post("/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def admin_tokens(client: httpx.AsyncClient) -> dict[str, Any]:
    return await login(client, ADMIN_USERNAME, ADMIN_PASSWORD)


@pytest.fixture
async def admin_headers(admin_tokens: dict[str, Any]) -> dict[str, str]:
    return bearer(admin_tokens["access_token"])


async def create_user(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    username: str,
    scopes: list[str] | None = None,
    password: str = USER_PASSWORD,
) -> None:
    body = {
        "username": username,
        "password": password,
        "scopes": ["predict"] if scopes is None else scopes,
    }
    response = await client.post("/users", json=body, headers=admin_headers)
    assert response.status_code == 201, response.text


@pytest.fixture
async def user_tokens(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> dict[str, Any]:
    await create_user(client, admin_headers, "alice")
    return await login(client, "alice", USER_PASSWORD)


@pytest.fixture
async def user_headers(user_tokens: dict[str, Any]) -> dict[str, str]:
    return bearer(user_tokens["access_token"])


# Real servers: gunicorn with the project's config and uvicorn workers.

SERVER_ENV = {
    "ARGON2_TIME_COST": "1",
    "ARGON2_MEMORY_COST_KIB": "1024",
    "ARGON2_PARALLELISM": "1",
    "ADMIN_USERNAME": ADMIN_USERNAME,
    "ADMIN_PASSWORD": ADMIN_PASSWORD,
    "WEB_CONCURRENCY": "2",
    "LOG_FORMAT": "json",
}

RATE_VARIABLES = (
    "RATE_LIMIT_PREDICT",
    "RATE_LIMIT_LOGIN",
    "RATE_LIMIT_LOGIN_IP",
    "RATE_LIMIT_PUBLIC",
)

GunicornFactory = Callable[..., GunicornProcess]


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
            **SERVER_ENV,
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


def login_http(base_url: str, username: str, password: str) -> dict[str, str]:
    response = httpx.post(
        f"{base_url}/token", data={"username": username, "password": password}, timeout=10
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, str] = response.json()
    return tokens


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A Redis of this module's own, so stopping or flushing it disturbs no other test."""
    server = RedisProcess(tmp_path_factory.mktemp("redis-serving"), appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http_server(gunicorn_factory: GunicornFactory, redis_server: RedisProcess) -> GunicornProcess:
    """gunicorn configured like `make_settings`, on the session Redis: the twin of `app`."""
    return gunicorn_factory(redis_server.url, **dict.fromkeys(RATE_VARIABLES, "1000/minute"))
