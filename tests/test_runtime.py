"""The worker's runtime: starting while Redis is down, and catching up when it is back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from service.main import create_app
from tests.support.processes import RedisProcess
from tests.support.settings import ADMIN_PASSWORD, ADMIN_USERNAME, make_settings


async def test_a_worker_started_without_redis_creates_the_admin_once_redis_answers(
    model_dir: Path, tmp_path: Path
) -> None:
    redis = RedisProcess(tmp_path / "late-redis")  # a free port, not started yet
    app = create_app(make_settings(redis.url, model_dir, redis_socket_timeout=0.5))
    form = {"grant_type": "password", "username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 503
            assert (await client.post("/token", data=form)).status_code == 503
            redis.start()
            try:
                for _ in range(100):
                    if (await client.post("/token", data=form)).status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                else:
                    pytest.fail("the admin was not created after Redis came back")
                assert (await client.get("/readyz")).status_code == 200
            finally:
                redis.stop()
