"""The real server: gunicorn + uvicorn workers with deploy/gunicorn.conf.py, over HTTP."""

from __future__ import annotations

import httpx

from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, GunicornFactory, login_http
from tests.support.processes import RedisProcess


def test_prediction_over_real_http(
    gunicorn_factory: GunicornFactory, module_redis: RedisProcess
) -> None:
    server = gunicorn_factory(module_redis.url)
    tokens = login_http(server.url, ADMIN_USERNAME, ADMIN_PASSWORD)
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
