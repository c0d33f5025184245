"""Sessions: every login starts one, logout ends it whole, users and admins list and end
them, and Redis holds one record per live session, nothing per refresh or per logout."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any

import httpx
import pytest
from jose import jwt
from redis.asyncio import Redis

from service.infra.keys import KEY_PREFIX
from tests.support.auth import bearer, create_user, login
from tests.support.processes import BOTH_TRANSPORTS
from tests.support.settings import USER_PASSWORD

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def sid_of(token: str) -> str:
    sid: str = jwt.get_unverified_claims(token)["sid"]
    return sid


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/token/refresh", json={"refresh_token": token})


async def works(client: httpx.AsyncClient, access: str) -> bool:
    response = await client.get("/users/me", headers=bearer(access))
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


async def test_a_login_starts_a_session_that_refreshing_keeps(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    sid = sid_of(user_tokens["access_token"])
    assert sid_of(user_tokens["refresh_token"]) == sid
    again = (await refresh(client, user_tokens["refresh_token"])).json()
    assert sid_of(again["access_token"]) == sid_of(again["refresh_token"]) == sid
    other = await login(client, "alice", USER_PASSWORD)
    assert sid_of(other["access_token"]) != sid


async def test_listing_my_sessions(client: httpx.AsyncClient, user_tokens: dict[str, Any]) -> None:
    second = await login(client, "alice", USER_PASSWORD)
    response = await client.get(
        "/users/me/sessions",
        headers=bearer(user_tokens["access_token"]) | {"User-Agent": "listing-test/1.0"},
    )
    assert response.status_code == 200
    sessions = response.json()
    assert [s["sid"] for s in sessions] == [
        sid_of(user_tokens["access_token"]),
        sid_of(second["access_token"]),
    ]
    assert [s["current"] for s in sessions] == [True, False]
    for session in sessions:
        assert set(session) == {
            "sid",
            "created_at",
            "last_used_at",
            "expires_at",
            "current",
            "ip",
            "user_agent",
        }
        for field in ("created_at", "last_used_at", "expires_at"):
            assert RFC3339_UTC.fullmatch(session[field]), session[field]
        assert session["last_used_at"] == session["created_at"]
        assert session["ip"] == "127.0.0.1"
        assert session["user_agent"].startswith("python-httpx/")


async def test_a_refresh_moves_last_used_at(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    await asyncio.sleep(0.01)
    pair = (await refresh(client, user_tokens["refresh_token"])).json()
    (session,) = (
        await client.get("/users/me/sessions", headers=bearer(pair["access_token"]))
    ).json()
    created = datetime.fromisoformat(session["created_at"])
    assert datetime.fromisoformat(session["last_used_at"]) > created


async def test_ending_one_of_my_sessions(
    client: httpx.AsyncClient, user_tokens: dict[str, Any], admin_tokens: dict[str, Any]
) -> None:
    other = await login(client, "alice", USER_PASSWORD)
    mine = bearer(user_tokens["access_token"])
    ended = await client.delete(f"/users/me/sessions/{sid_of(other['access_token'])}", headers=mine)
    assert ended.status_code == 204
    assert not await works(client, other["access_token"])
    assert (await refresh(client, other["refresh_token"])).status_code == 400
    assert await works(client, user_tokens["access_token"])
    # Not the caller's: someone else's live session, an unknown one, one already ended.
    for sid in (
        sid_of(admin_tokens["access_token"]),
        "no-such-session",
        sid_of(other["access_token"]),
    ):
        response = await client.delete(f"/users/me/sessions/{sid}", headers=mine)
        assert response.status_code == 404
    assert await works(client, admin_tokens["access_token"])


async def test_admins_list_and_end_anyones_sessions(
    client: httpx.AsyncClient, user_tokens: dict[str, Any], admin_tokens: dict[str, Any]
) -> None:
    admin = bearer(admin_tokens["access_token"])
    listed = (await client.get("/users/alice/sessions", headers=admin)).json()
    assert [(s["sid"], s["current"]) for s in listed] == [
        (sid_of(user_tokens["access_token"]), False)
    ]
    own = (await client.get("/users/admin/sessions", headers=admin)).json()
    assert [s["current"] for s in own] == [True]
    sid = sid_of(user_tokens["access_token"])
    assert (await client.delete(f"/users/alice/sessions/{sid}", headers=admin)).status_code == 204
    assert not await works(client, user_tokens["access_token"])
    assert (await client.delete(f"/users/alice/sessions/{sid}", headers=admin)).status_code == 404
    user = bearer((await login(client, "alice", USER_PASSWORD))["access_token"])
    assert (await client.get("/users/admin/sessions", headers=user)).status_code == 403


@BOTH_TRANSPORTS
async def test_logout_after_a_refresh_ends_the_older_tokens_too(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    """Finding 2: logging out with the refreshed pair left the first access token working."""
    pair = (await refresh(client, user_tokens["refresh_token"])).json()
    logout = {"refresh_token": pair["refresh_token"]}
    assert (
        await client.post("/logout", json=logout, headers=bearer(pair["access_token"]))
    ).status_code == 204
    for access in (user_tokens["access_token"], pair["access_token"]):
        assert not await works(client, access)
    assert (await refresh(client, pair["refresh_token"])).status_code == 400


@BOTH_TRANSPORTS
async def test_logout_with_the_access_token_alone_ends_the_refresh_token(
    client: httpx.AsyncClient, admin_tokens: dict[str, Any]
) -> None:
    """Finding 2: the refresh token survived, and its new access token passed admin routes."""
    response = await client.post("/logout", headers=bearer(admin_tokens["access_token"]))
    assert response.status_code == 204
    revived = await refresh(client, admin_tokens["refresh_token"])
    assert revived.status_code == 400
    assert (
        await client.get("/users", headers=bearer(admin_tokens["access_token"]))
    ).status_code == 401


async def test_logout_of_all_sessions(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    others = [await login(client, "alice", USER_PASSWORD) for _ in range(2)]
    response = await client.post(
        "/logout", json={"all_sessions": True}, headers=bearer(user_tokens["access_token"])
    )
    assert response.status_code == 204
    for tokens in (user_tokens, *others):
        assert not await works(client, tokens["access_token"])
        assert (await refresh(client, tokens["refresh_token"])).status_code == 400
    assert await works(client, (await login(client, "alice", USER_PASSWORD))["access_token"])


@pytest.mark.parametrize("settings_overrides", [{"max_sessions_per_user": 3}])
async def test_a_login_beyond_the_cap_ends_the_oldest_session(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    later = [await login(client, "alice", USER_PASSWORD) for _ in range(3)]
    assert not await works(client, user_tokens["access_token"])
    assert (await refresh(client, user_tokens["refresh_token"])).status_code == 400
    for tokens in later:
        assert await works(client, tokens["access_token"])
    listed = (
        await client.get("/users/me/sessions", headers=bearer(later[0]["access_token"]))
    ).json()
    assert [s["sid"] for s in listed] == [sid_of(t["access_token"]) for t in later]


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "session_max_age_seconds": 5,
            "refresh_token_ttl_seconds": 60,
            "access_token_ttl_seconds": 60,
        }
    ],
)
async def test_no_refresh_extends_a_session_past_its_max_age(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    first = jwt.get_unverified_claims(user_tokens["refresh_token"])
    assert first["exp"] == first["sxp"] == first["iat"] + 5
    pair = (await refresh(client, user_tokens["refresh_token"])).json()
    for token in (pair["access_token"], pair["refresh_token"]):
        assert jwt.get_unverified_claims(token)["exp"] <= first["sxp"]
    await asyncio.sleep(5.2)
    assert (await refresh(client, pair["refresh_token"])).status_code == 400


@pytest.mark.parametrize(
    "settings_overrides",
    [{"access_token_ttl_seconds": 5, "refresh_token_ttl_seconds": 5, "session_max_age_seconds": 5}],
)
async def test_lifetimes_go_down_to_five_seconds(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    claims = jwt.get_unverified_claims(user_tokens["access_token"])
    assert claims["exp"] - claims["iat"] == 5
    assert await works(client, user_tokens["access_token"])


async def _auth_keys(redis: Redis) -> list[str]:
    """Every key but rate-limit counters (one per client or user and policy, not per event)."""
    keys = [key async for key in redis.scan_iter(f"{KEY_PREFIX}*")]
    return sorted(key for key in keys if ":rl:" not in key)


async def test_redis_holds_nothing_per_refresh_or_per_logout(
    client: httpx.AsyncClient, user_tokens: dict[str, Any], redis: Redis
) -> None:
    """Finding 3: every refresh and logout left a key behind for a day."""
    before = await _auth_keys(redis)
    token = user_tokens["refresh_token"]
    for _ in range(50):
        token = (await refresh(client, token)).json()["refresh_token"]
    for _ in range(20):
        tokens = await login(client, "alice", USER_PASSWORD)
        headers = bearer(tokens["access_token"])
        assert (await client.post("/logout", headers=headers)).status_code == 204
    after = await _auth_keys(redis)
    # The same keys, whatever the traffic: alice's record, index and one live session.
    assert after == before


async def test_the_last_admin_cannot_demote_disable_or_delete_itself(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """Finding 6: the only admin could lock everyone out."""
    for method, body in (
        ("PATCH", {"scopes": ["predict"]}),
        ("PATCH", {"disabled": True}),
        ("DELETE", None),
    ):
        response = await client.request(method, "/users/admin", json=body, headers=admin_headers)
        assert response.status_code == 409, (method, body)
    me = await client.get("/users/me", headers=admin_headers)
    assert me.json() == {"username": "admin", "scopes": ["admin", "predict"], "disabled": False}


async def test_an_admin_cannot_demote_itself_even_with_another_admin_around(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await create_user(client, admin_headers, "second", scopes=["admin"])
    response = await client.patch("/users/admin", json={"disabled": True}, headers=admin_headers)
    assert response.status_code == 409
    # Demoting the other one is fine while this one remains.
    other = await client.patch("/users/second", json={"scopes": []}, headers=admin_headers)
    assert other.status_code == 200


async def test_two_admins_demoting_each_other_at_once_leave_one(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await create_user(client, admin_headers, "second", scopes=["admin"])
    second = bearer((await login(client, "second", USER_PASSWORD))["access_token"])
    results = await asyncio.gather(
        client.patch("/users/second", json={"scopes": []}, headers=admin_headers),
        client.patch("/users/admin", json={"scopes": []}, headers=second),
    )
    codes = sorted(response.status_code for response in results)
    assert codes[0] == 200
    assert codes[1] in (401, 409)  # 401: its token died with the scope change that won
    for headers in (admin_headers, second):
        listing = await client.get("/users", headers=headers)
        if listing.status_code == 200:
            admins = [u for u in listing.json() if "admin" in u["scopes"] and not u["disabled"]]
            assert len(admins) == 1
            return
    raise AssertionError("no admin left to list the users")
