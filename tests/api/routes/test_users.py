"""User administration and the admin bootstrap."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from redis.asyncio import Redis

from service.infra.config import Settings
from service.infra.keys import rate_key, user_tag
from service.main import create_app
from tests.support.auth import bearer, create_user, login
from tests.support.settings import USER_PASSWORD


async def test_me(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    response = await client.get("/users/me", headers=user_headers)
    assert response.json() == {"username": "alice", "scopes": ["predict"], "disabled": False}


async def test_create_list_patch_delete(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    body = {"username": "Carol", "password": USER_PASSWORD, "scopes": ["predict"]}
    created = await client.post("/users", json=body, headers=admin_headers)
    assert created.status_code == 201
    assert created.json()["username"] == "carol"
    assert (await client.post("/users", json=body, headers=admin_headers)).status_code == 409
    listed = (await client.get("/users", headers=admin_headers)).json()
    assert [u["username"] for u in listed] == ["admin", "carol"]
    assert "hash" not in str(listed)
    assert "password" not in str(listed)
    patched = await client.patch(
        "/users/CAROL", json={"scopes": ["predict", "admin"]}, headers=admin_headers
    )
    assert patched.status_code == 200
    assert patched.json()["scopes"] == ["admin", "predict"]
    assert (await client.delete("/users/carol", headers=admin_headers)).status_code == 204
    assert (await client.delete("/users/carol", headers=admin_headers)).status_code == 404
    assert (await client.patch("/users/carol", json={}, headers=admin_headers)).status_code == 404
    revoke = await client.post("/users/carol/revoke-tokens", headers=admin_headers)
    assert revoke.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"username": "ab", "password": USER_PASSWORD},
        {"username": "a" * 65, "password": USER_PASSWORD},
        {"username": "bad name", "password": USER_PASSWORD},
        {"username": "dave", "password": "short"},
        {"username": "dave", "password": "x" * 1025},
        {"username": "davedavedave", "password": "DaveDaveDave"},
        {"username": "dave", "password": USER_PASSWORD, "scopes": ["root"]},
        {"username": "dave", "password": USER_PASSWORD, "extra": True},
        {"username": 5, "password": USER_PASSWORD},
    ],
)
async def test_invalid_user_bodies_are_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], body: dict[str, Any]
) -> None:
    response = await client.post("/users", json=body, headers=admin_headers)
    assert response.status_code == 422, response.text


async def test_long_password_is_fine(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await create_user(client, admin_headers, "erin", password="p" * 1024)
    await login(client, "erin", "p" * 1024)


async def test_password_change_revokes_tokens(
    client: httpx.AsyncClient, user_tokens: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    new_password = "a-brand-new-password"
    response = await client.patch(
        "/users/alice", json={"password": new_password}, headers=admin_headers
    )
    assert response.status_code == 200
    me = await client.get("/users/me", headers=bearer(user_tokens["access_token"]))
    assert me.status_code == 401
    await login(client, "alice", new_password)


async def test_admin_routes_need_admin(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    assert (await client.get("/users", headers=user_headers)).status_code == 403
    assert (await client.get("/users")).status_code == 401
    body = {"username": "mallory", "password": USER_PASSWORD}
    assert (await client.post("/users", json=body, headers=user_headers)).status_code == 403


async def test_invalid_path_username_is_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.delete("/users/" + "x" * 100, headers=admin_headers)
    assert response.status_code == 422


async def test_concurrent_start_ups_create_exactly_one_admin(
    settings: Settings, redis: Redis
) -> None:
    await redis.flushdb()
    apps: list[FastAPI] = [
        create_app(
            settings.model_copy(update={"admin_password": SecretStr(f"admin-password-{i:04d}")})
        )
        for i in range(6)
    ]
    async with AsyncExitStack() as stack:
        await asyncio.gather(
            *(stack.enter_async_context(a.router.lifespan_context(a)) for a in apps)
        )
        assert await redis.smembers("sma:users") == {"admin"}
        transport = httpx.ASGITransport(app=apps[0])
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            accepted = [
                (
                    await client.post(
                        "/token",
                        data={
                            "grant_type": "password",
                            "username": "admin",
                            "password": f"admin-password-{i:04d}",
                        },
                    )
                ).status_code
                for i in range(6)
            ]
    assert accepted.count(200) == 1


async def test_existing_admin_is_never_overwritten(
    settings: Settings, redis: Redis, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    other = create_app(
        settings.model_copy(update={"admin_password": SecretStr("a-different-password")})
    )
    async with other.router.lifespan_context(other):
        pass
    await login(client, "admin", "admin-password-for-tests")


async def test_a_recreated_user_starts_with_a_fresh_quota(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    admin_headers: dict[str, str],
    redis: Redis,
) -> None:
    body = {"data": [5.1, 3.5, 1.4, 0.2]}
    assert (await client.post("/predict", json=body, headers=user_headers)).status_code == 200
    counter = rate_key("predict", user_tag("alice"))
    assert await redis.exists(counter)
    assert (await client.delete("/users/alice", headers=admin_headers)).status_code == 204
    assert not await redis.exists(counter)


@pytest.mark.parametrize("method", ["PATCH", "DELETE", "PUT", "POST"])
async def test_only_get_is_defined_on_my_own_user(
    client: httpx.AsyncClient, admin_headers: dict[str, str], method: str
) -> None:
    """`/users/me` is the caller's resource, not a user named "me": other methods are 405."""
    response = await client.request(method, "/users/me", json={}, headers=admin_headers)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
