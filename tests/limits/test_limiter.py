"""Rate limits in-process against a real Redis: headers, 429, windows, overrides, identities."""

from __future__ import annotations

import asyncio
import re
from typing import Any, cast

import httpx
import pytest

from service.limits.gate import Gate
from service.limits.limiter import GateBucketFactory
from service.rules.policies import PREDICT
from service.rules.rates import Rate
from tests.support.auth import bearer, create_user, login
from tests.support.settings import USER_PASSWORD

BODY = {"data": [5.1, 3.5, 1.4, 0.2]}
LIMIT = 5


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "rate_limit_predict": f"{LIMIT}/minute",
        "rate_limit_login": "3/minute",
        "rate_limit_login_ip": "6/minute",
        "rate_limit_public": "4/minute",
    }


async def test_headers_on_admitted_and_rejected(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    for used in range(1, LIMIT + 1):
        response = await client.post("/predict", json=BODY, headers=user_headers)
        assert response.status_code == 200
        assert response.headers["ratelimit-policy"] == f'"default";q={LIMIT};w=60'
        match = re.fullmatch(r'"default";r=(\d+);t=(\d+)', response.headers["ratelimit"])
        assert match is not None
        assert int(match.group(1)) == LIMIT - used
        assert 1 <= int(match.group(2)) <= 60
        assert "retry-after" not in response.headers
    rejected = await client.post("/predict", json=BODY, headers=user_headers)
    assert rejected.status_code == 429
    assert rejected.json() == {"detail": "Too many requests"}
    assert 1 <= int(rejected.headers["retry-after"]) <= 60
    assert re.fullmatch(r'"default";r=0;t=\d+', rejected.headers["ratelimit"])
    assert rejected.headers["ratelimit-policy"] == f'"default";q={LIMIT};w=60'


async def test_batch_and_single_share_the_quota(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    batch = {"instances": [BODY["data"]]}
    codes = []
    for i in range(LIMIT + 1):
        path, body = ("/predict", BODY) if i % 2 else ("/predict/batch", batch)
        codes.append((await client.post(path, json=body, headers=user_headers)).status_code)
    assert codes == [200] * LIMIT + [429]


async def test_concurrent_burst_admits_exactly_the_limit(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    responses = await asyncio.gather(
        *(client.post("/predict", json=BODY, headers=user_headers) for _ in range(4 * LIMIT))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == LIMIT
    assert codes.count(429) == 3 * LIMIT


async def test_users_do_not_share_a_quota(
    client: httpx.AsyncClient, user_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    for _ in range(LIMIT):
        await client.post("/predict", json=BODY, headers=user_headers)
    assert (await client.post("/predict", json=BODY, headers=user_headers)).status_code == 429
    await create_user(client, admin_headers, "bob")
    bob = bearer((await login(client, "bob", USER_PASSWORD))["access_token"])
    assert (await client.post("/predict", json=BODY, headers=bob)).status_code == 200


async def test_admin_override_applies(
    client: httpx.AsyncClient, user_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    response = await client.patch(
        "/users/alice", json={"rate_limit": "8/minute"}, headers=admin_headers
    )
    assert response.status_code == 200
    assert response.json()["rate_limit"] == "8/minute"
    codes = [
        (await client.post("/predict", json=BODY, headers=user_headers)).status_code
        for _ in range(9)
    ]
    assert codes == [200] * 8 + [429]
    limited = await client.post("/predict", json=BODY, headers=user_headers)
    assert limited.headers["ratelimit-policy"] == '"default";q=8;w=60'
    cleared = await client.patch("/users/alice", json={"rate_limit": None}, headers=admin_headers)
    assert cleared.json()["rate_limit"] is None


async def test_bad_override_is_422(
    client: httpx.AsyncClient, user_tokens: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    for value in ("fast", "0/minute", "10/fortnight", 10):
        response = await client.patch(
            "/users/alice", json={"rate_limit": value}, headers=admin_headers
        )
        assert response.status_code == 422, value


async def test_login_brute_force_is_cut_off_even_with_the_right_password(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    # user_tokens logged alice in once (1 of 3 attempts used).
    for _ in range(2):
        wrong = await client.post(
            "/token", data={"grant_type": "password", "username": "alice", "password": "x" * 12}
        )
        assert wrong.status_code == 400
    right = await client.post(
        "/token", data={"grant_type": "password", "username": "alice", "password": USER_PASSWORD}
    )
    assert right.status_code == 429
    assert int(right.headers["retry-after"]) >= 1
    # Both policies of the route, in the order they counted the request.
    assert right.headers["ratelimit-policy"] == '"login-ip";q=6;w=60, "login";q=3;w=60'
    assert re.fullmatch(r'"login-ip";r=1;t=\d+, "login";r=0;t=\d+', right.headers["ratelimit"])


async def test_one_address_cannot_try_many_usernames(client: httpx.AsyncClient) -> None:
    codes = [
        (
            await client.post(
                "/token",
                data={"grant_type": "password", "username": f"user{i}", "password": "x" * 12},
            )
        ).status_code
        for i in range(7)
    ]
    assert codes == [400] * 6 + [429]


async def test_public_routes_are_limited_per_ip(client: httpx.AsyncClient) -> None:
    codes = [(await client.get("/")).status_code for _ in range(5)]
    assert codes == [200] * 4 + [429]


async def test_health_routes_are_never_limited(client: httpx.AsyncClient) -> None:
    for _ in range(10):
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_predict": "2/second"}])
async def test_window_really_resets(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    codes = [
        (await client.post("/predict", json=BODY, headers=user_headers)).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    await asyncio.sleep(1.1)
    assert (await client.post("/predict", json=BODY, headers=user_headers)).status_code == 200


async def test_counted_requests_carry_the_headers_whatever_their_status(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    invalid = await client.post("/predict", json={"data": [1, 2, 3]}, headers=user_headers)
    assert invalid.status_code == 422
    assert re.fullmatch(rf'"default";r={LIMIT - 1};t=\d+', invalid.headers["ratelimit"])
    failed_login = await client.post(
        "/token", data={"grant_type": "password", "username": "nobody", "password": "x" * 12}
    )
    assert failed_login.status_code == 400
    assert '"login";q=3;w=60' in failed_login.headers["ratelimit-policy"]
    not_counted = await client.get("/users/me", headers=user_headers)
    assert "ratelimit" not in not_counted.headers


def test_each_key_gets_a_bucket_of_its_own_that_carries_the_policys_rate() -> None:
    factory = GateBucketFactory(cast(Gate, object()), PREDICT, Rate(5, 60))
    # fastapi-limiter's key: the identifier, then ":<route index>:<dependency index>".
    alice = factory.get(factory.wrap_item("alice:3:0"))
    bob = factory.get(factory.wrap_item("bob:1:0"))

    assert alice is not bob
    assert [(rate.limit, rate.interval) for rate in alice.rates] == [(5, 60_000)]
    assert bob.rates == alice.rates
    with pytest.raises(AttributeError):
        alice.rates = []
