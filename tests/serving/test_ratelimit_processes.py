"""Rate limits across real processes: 2 workers, 2 instances, proxies, and Redis outages."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.auth import login_sync
from tests.support.processes import GunicornFactory, GunicornProcess, RedisProcess
from tests.support.settings import ADMIN_PASSWORD, ADMIN_USERNAME

BODY = {"data": [5.1, 3.5, 1.4, 0.2]}
LIMIT = 20
# Per hour: GCRA gives a client one more request every window/N (3 minutes here), so a burst
# that a busy machine spreads over seconds still sees exactly N admitted.
LIMITS = {"RATE_LIMIT_PREDICT": f"{LIMIT}/hour", "RATE_LIMIT_PUBLIC": "4/hour"}


@pytest.fixture(scope="module")
def pair(gunicorn_factory: GunicornFactory, module_redis: RedisProcess) -> list[GunicornProcess]:
    """Two instances (2 workers each) sharing one Redis, trusting only 127.0.0.1 as proxy."""
    return [gunicorn_factory(module_redis.url, **LIMITS) for _ in range(2)]


@pytest.fixture(scope="module")
def untrusting(gunicorn_factory: GunicornFactory, module_redis: RedisProcess) -> GunicornProcess:
    """An instance that trusts no proxy that the tests can be."""
    return gunicorn_factory(module_redis.url, TRUSTED_PROXIES="192.0.2.1", **LIMITS)


def fresh_user(base_url: str, name: str) -> dict[str, str]:
    admin = login_sync(httpx, ADMIN_USERNAME, ADMIN_PASSWORD, base=base_url)
    body = {"username": name, "password": "process-test-password", "scopes": ["predict"]}
    created = httpx.post(
        f"{base_url}/users",
        json=body,
        headers={"Authorization": f"Bearer {admin['access_token']}"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    tokens = login_sync(httpx, name, "process-test-password", base=base_url)
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def burst(urls: list[str], headers: dict[str, str], count: int) -> list[int]:
    def one(i: int) -> int:
        url = urls[i % len(urls)]
        return httpx.post(f"{url}/predict", json=BODY, headers=headers, timeout=10).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.slow
def test_exact_across_two_workers(pair: list[GunicornProcess]) -> None:
    headers = fresh_user(pair[0].url, "burst-one")
    codes = burst([pair[0].url], headers, 3 * LIMIT)
    assert codes.count(200) == LIMIT
    assert codes.count(429) == 2 * LIMIT


@pytest.mark.slow
def test_exact_across_two_instances(pair: list[GunicornProcess]) -> None:
    headers = fresh_user(pair[0].url, "burst-two")
    codes = burst([server.url for server in pair], headers, 3 * LIMIT)
    assert codes.count(200) == LIMIT
    assert codes.count(429) == 2 * LIMIT


def _root_codes(url: str, forwarded: list[str]) -> list[int]:
    return [
        httpx.get(f"{url}/", headers={"X-Forwarded-For": value}, timeout=10).status_code
        for value in forwarded
    ]


@pytest.mark.slow
def test_spoofed_forwarded_for_from_untrusted_peer_gains_nothing(
    untrusting: GunicornProcess,
) -> None:
    spoofed = [f"203.0.113.{i}" for i in range(1, 7)]
    assert _root_codes(untrusting.url, spoofed) == [200] * 4 + [429] * 2


@pytest.mark.slow
def test_forwarded_address_from_trusted_proxy_is_the_one_limited(
    pair: list[GunicornProcess],
) -> None:
    url = pair[1].url
    assert _root_codes(url, ["198.51.100.7"] * 5) == [200] * 4 + [429]
    assert _root_codes(url, ["198.51.100.8"]) == [200]
    # A client-supplied first entry is not believed: the right-most untrusted address is.
    forged = [f"10.{i}.0.1, 198.51.100.9" for i in range(5)]
    assert _root_codes(url, forged) == [200] * 4 + [429]


@pytest.mark.slow
def test_redis_outage_answers_503_fast_and_recovers(
    pair: list[GunicornProcess], module_redis: RedisProcess
) -> None:
    server = pair[0]
    headers = fresh_user(server.url, "outage")
    assert httpx.post(f"{server.url}/predict", json=BODY, headers=headers).status_code == 200
    module_redis.stop()
    try:
        for path, kwargs in (
            ("/predict", {"json": BODY, "headers": headers}),
            ("/token", {"data": {"grant_type": "password", "username": "outage", "password": "x"}}),
            ("/users/me", {"headers": headers}),
        ):
            method = "GET" if path == "/users/me" else "POST"
            started = time.monotonic()
            response = httpx.request(method, f"{server.url}{path}", timeout=10, **kwargs)
            elapsed = time.monotonic() - started
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"] == "1"
            assert elapsed < 2.0, (path, elapsed)
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        assert "redis" in ready.json()["detail"]
    finally:
        module_redis.start()
    # Pooled connections that the restart closed are retried once on a fresh connection, so
    # the very first requests after the restart already succeed, on both workers.
    codes = [
        httpx.post(f"{server.url}/predict", json=BODY, headers=headers).status_code
        for _ in range(6)
    ]
    assert codes == [200] * 6
    assert httpx.get(f"{server.url}/readyz").status_code == 200
