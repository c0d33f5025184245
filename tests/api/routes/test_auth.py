"""Login, refresh rotation with reuse detection, logout."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from service.auth.passwords import PasswordHasher
from service.infra.config import Settings
from service.infra.keys import session_key, user_key
from tests.support.auth import bearer, create_user, login
from tests.support.processes import BOTH_TRANSPORTS
from tests.support.settings import ADMIN_PASSWORD, USER_PASSWORD


@BOTH_TRANSPORTS
async def test_login_returns_token_pair(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/token", data={"grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert body["scope"] == "admin predict"
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert response.headers["cache-control"] == "no-store"


async def test_username_is_case_insensitive(client: httpx.AsyncClient) -> None:
    await login(client, "ADMIN", ADMIN_PASSWORD)


@BOTH_TRANSPORTS
async def test_unknown_user_and_wrong_password_look_the_same(client: httpx.AsyncClient) -> None:
    wrong_password = await client.post(
        "/token", data={"grant_type": "password", "username": "admin", "password": "x" * 12}
    )
    unknown_user = await client.post(
        "/token", data={"grant_type": "password", "username": "nobody", "password": "x" * 12}
    )
    invalid_name = await client.post(
        "/token", data={"grant_type": "password", "username": "a b", "password": "x" * 12}
    )
    for response in (wrong_password, unknown_user, invalid_name):
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_grant"
        assert response.headers["cache-control"] == "no-store"
    assert wrong_password.json() == unknown_user.json() == invalid_name.json()


async def test_unknown_user_still_verifies_a_hash(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timing: an unknown username must cost one Argon2 verification like a wrong password."""
    calls: list[str | None] = []
    original = PasswordHasher.verify

    async def spy(
        hasher: PasswordHasher, password: str, stored_hash: str | None
    ) -> tuple[bool, str | None]:
        calls.append(stored_hash)
        return await original(hasher, password, stored_hash)

    monkeypatch.setattr(PasswordHasher, "verify", spy)
    await client.post(
        "/token", data={"grant_type": "password", "username": "nobody", "password": "x" * 12}
    )
    assert calls == [None]


@BOTH_TRANSPORTS
async def test_disabled_user_cannot_log_in(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await create_user(client, admin_headers, "bob")
    await client.patch("/users/bob", json={"disabled": True}, headers=admin_headers)
    response = await client.post(
        "/token", data={"grant_type": "password", "username": "bob", "password": USER_PASSWORD}
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_grant",
        "error_description": "Incorrect username or password",
        "detail": "Incorrect username or password",
    }


async def test_login_form_is_required(client: httpx.AsyncClient) -> None:
    for answer in (
        await client.post("/token"),
        await client.post("/token", json={"username": "a", "password": "b"}),
    ):
        assert answer.status_code == 400
        assert answer.json()["error"] == "invalid_request"


@BOTH_TRANSPORTS
async def test_refresh_rotates(client: httpx.AsyncClient, user_tokens: dict[str, Any]) -> None:
    first = await client.post(
        "/token/refresh", json={"refresh_token": user_tokens["refresh_token"]}
    )
    assert first.status_code == 200
    pair = first.json()
    assert pair["refresh_token"] != user_tokens["refresh_token"]
    assert (await client.get("/users/me", headers=bearer(pair["access_token"]))).status_code == 200
    second = await client.post("/token/refresh", json={"refresh_token": pair["refresh_token"]})
    assert second.status_code == 200


@BOTH_TRANSPORTS
async def test_refresh_reuse_ends_that_session_only(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    other = await login(client, "alice", USER_PASSWORD)
    old = user_tokens["refresh_token"]
    rotated = (await client.post("/token/refresh", json={"refresh_token": old})).json()
    reuse = await client.post("/token/refresh", json={"refresh_token": old})
    assert reuse.status_code == 400
    assert "reuse" in reuse.json()["detail"]
    for token in (rotated["access_token"], user_tokens["access_token"]):
        assert (await client.get("/users/me", headers=bearer(token))).status_code == 401
    again = await client.post("/token/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert again.status_code == 400
    # The user's other session lives on.
    assert (await client.get("/users/me", headers=bearer(other["access_token"]))).status_code == 200
    refreshed = await client.post("/token/refresh", json={"refresh_token": other["refresh_token"]})
    assert refreshed.status_code == 200


async def test_access_token_is_not_a_refresh_token(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    response = await client.post(
        "/token/refresh", json={"refresh_token": user_tokens["access_token"]}
    )
    assert response.status_code == 400


@BOTH_TRANSPORTS
async def test_logout_revokes_access_and_refresh(
    client: httpx.AsyncClient, user_tokens: dict[str, Any], redis: Redis
) -> None:
    headers = bearer(user_tokens["access_token"])
    response = await client.post(
        "/logout", json={"refresh_token": user_tokens["refresh_token"]}, headers=headers
    )
    assert response.status_code == 204
    me = await client.get("/users/me", headers=headers)
    assert me.status_code == 401
    assert me.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    refresh = await client.post(
        "/token/refresh", json={"refresh_token": user_tokens["refresh_token"]}
    )
    assert refresh.status_code == 400
    # Ending a session deletes its record: nothing is left behind per token.
    assert [key async for key in redis.scan_iter(f"{session_key('alice', '*')}")] == []


@BOTH_TRANSPORTS
async def test_logout_without_body_ends_the_whole_session(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    headers = bearer(user_tokens["access_token"])
    assert (await client.post("/logout", headers=headers)).status_code == 204
    assert (await client.post("/logout", headers=headers)).status_code == 401
    refresh = await client.post(
        "/token/refresh", json={"refresh_token": user_tokens["refresh_token"]}
    )
    assert refresh.status_code == 400


async def test_login_rehashes_when_parameters_change(
    settings: Settings, redis: Redis, client: httpx.AsyncClient
) -> None:
    before = await redis.hget(user_key("admin"), "hash")
    assert before is not None
    assert "m=1024" in before
    stronger = settings.model_copy(update={"argon2_memory_cost_kib": 2048})
    from service.main import create_app

    app = create_app(stronger)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as other:
            await login(other, "admin", ADMIN_PASSWORD)
    after = await redis.hget(user_key("admin"), "hash")
    assert after is not None
    assert "m=2048" in after
    await login(client, "admin", ADMIN_PASSWORD)


async def test_token_expiry_is_in_the_claims(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    from jose import jwt

    claims = jwt.get_unverified_claims(user_tokens["access_token"])
    assert claims["exp"] - claims["iat"] == 900
    assert claims["iat"] <= time.time() + 1
    claim_names = ("sub", "scope", "iat", "nbf", "exp", "jti", "iss", "aud", "token_use", "ver")
    for name in (*claim_names, "sid", "sxp"):
        assert name in claims
    assert jwt.get_unverified_header(user_tokens["access_token"])["kid"].startswith("hs-")
