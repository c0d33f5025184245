"""Fixtures that run the real server: gunicorn with the project's config and uvicorn workers."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME
from tests.support.processes import GunicornProcess, RedisProcess

SERVER_ENV = {
    "ARGON2_TIME_COST": "1",
    "ARGON2_MEMORY_COST_KIB": "1024",
    "ARGON2_PARALLELISM": "1",
    "ADMIN_USERNAME": ADMIN_USERNAME,
    "ADMIN_PASSWORD": ADMIN_PASSWORD,
    "WEB_CONCURRENCY": "2",
    "LOG_FORMAT": "json",
}

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
