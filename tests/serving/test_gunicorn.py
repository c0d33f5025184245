"""The real server: gunicorn + uvicorn workers with deploy/gunicorn.conf.py, over HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.auth import login_sync
from tests.support.processes import GunicornFactory, RedisProcess
from tests.support.settings import ADMIN_PASSWORD, ADMIN_USERNAME


def test_prediction_over_real_http(
    gunicorn_factory: GunicornFactory, module_redis: RedisProcess
) -> None:
    server = gunicorn_factory(module_redis.url)
    tokens = login_sync(httpx, ADMIN_USERNAME, ADMIN_PASSWORD, base=server.url)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    response = httpx.post(
        f"{server.url}/predict", json={"data": [5.1, 3.5, 1.4, 0.2]}, headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prediction"] == 0
    assert body["label"] == "setosa"
    assert "server" not in response.headers
    health = httpx.get(f"{server.url}/healthz")
    assert health.json() == {"status": "ok"}
    nan = httpx.post(
        f"{server.url}/predict",
        content=b'{"data": [NaN, 3.5, 1.4, 0.2]}',
        headers=headers | {"Content-Type": "application/json"},
    )
    assert nan.status_code == 422


def test_instances_starting_together_create_exactly_one_admin(
    gunicorn_factory: GunicornFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Three instances of two workers each, started at once on an empty Redis, each with
    its own ADMIN_PASSWORD: one admin exists afterwards, with one of those passwords."""
    redis = RedisProcess(tmp_path_factory.mktemp("redis-bootstrap")).start()
    try:
        passwords = [f"bootstrap-password-{i}" for i in range(3)]
        with ThreadPoolExecutor(max_workers=3) as pool:
            servers = list(
                pool.map(lambda pw: gunicorn_factory(redis.url, ADMIN_PASSWORD=pw), passwords)
            )
        accepted = [
            httpx.post(
                f"{servers[0].url}/token",
                data={"grant_type": "password", "username": ADMIN_USERNAME, "password": pw},
            ).status_code
            for pw in passwords
        ]
        assert sorted(accepted) == [200, 400, 400]
        admin = login_sync(
            httpx, ADMIN_USERNAME, passwords[accepted.index(200)], base=servers[1].url
        )
        users = httpx.get(
            f"{servers[2].url}/users", headers={"Authorization": f"Bearer {admin['access_token']}"}
        )
        assert [user["username"] for user in users.json()] == [ADMIN_USERNAME]
    finally:
        # The servers belong to gunicorn_factory, which stops them with the module.
        redis.stop()
