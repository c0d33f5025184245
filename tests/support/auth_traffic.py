"""Authentication traffic full of secrets, for tests that then search the logs for them."""

from __future__ import annotations

import httpx

from tests.support.auth import bearer
from tests.support.settings import ADMIN_PASSWORD, ADMIN_USERNAME

CAROL_PASSWORD = "carol-first-password-7f3a"
CAROL_NEW_PASSWORD = "carol-second-password-91bd"
WRONG_PASSWORDS = ("wrong-password-for-admin-5e1c", "password-of-nobody-c0d2")


def _ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    assert response.status_code == status, response.text
    return response


async def exercise_auth(client: httpx.AsyncClient) -> list[str]:
    """Log in, create a user, refresh, reuse a refresh token, fail logins, change a password,
    present tokens where they do not belong, log out; return every secret that went by."""
    admin = _ok(
        await client.post(
            "/token",
            data={"grant_type": "password", "username": ADMIN_USERNAME, "password": ADMIN_PASSWORD},
        )
    ).json()
    admin_headers = bearer(admin["access_token"])
    body = {"username": "carol", "password": CAROL_PASSWORD, "scopes": ["predict"]}
    _ok(await client.post("/users", json=body, headers=admin_headers), 201)
    carol = _ok(
        await client.post(
            "/token",
            data={"grant_type": "password", "username": "carol", "password": CAROL_PASSWORD},
        )
    ).json()
    rotated = _ok(
        await client.post("/token/refresh", json={"refresh_token": carol["refresh_token"]})
    ).json()
    reused = await client.post("/token/refresh", json={"refresh_token": carol["refresh_token"]})
    assert reused.status_code == 400
    for username, password in zip((ADMIN_USERNAME, "nobody"), WRONG_PASSWORDS, strict=True):
        failed = await client.post(
            "/token", data={"grant_type": "password", "username": username, "password": password}
        )
        assert failed.status_code == 400
    change = {"password": CAROL_NEW_PASSWORD}
    _ok(await client.patch("/users/carol", json=change, headers=admin_headers))
    # Tokens in places they do not belong: a query string, an unknown path, /metrics.
    leaked = await client.get(f"/users/me?access_token={rotated['access_token']}")
    assert leaked.status_code == 401
    await client.get(f"/nowhere/{admin['access_token']}", headers=admin_headers)
    await client.get("/metrics", headers=bearer(rotated["access_token"]))
    logout = {"refresh_token": admin["refresh_token"]}
    _ok(await client.post("/logout", json=logout, headers=admin_headers), 204)
    assert (await client.get("/users/me", headers=admin_headers)).status_code == 401
    tokens = [
        value
        for pair in (admin, carol, rotated)
        for key, value in pair.items()
        if key in ("access_token", "refresh_token")
    ]
    return [ADMIN_PASSWORD, CAROL_PASSWORD, CAROL_NEW_PASSWORD, *WRONG_PASSWORDS, *tokens]


def find_leaks(log_text: str, secrets: list[str]) -> list[str]:
    """The secrets (and bearer credentials) that appear in `log_text`, shortened for display."""
    found = [secret[:12] + "..." for secret in secrets if secret in log_text]
    # Every JWT also shows its signature alone, in case something splits it at the dots.
    found += [
        secret[:12] + "... (signature)"
        for secret in secrets
        if secret.count(".") == 2 and secret.rsplit(".", 1)[1] in log_text
    ]
    if "Bearer " in log_text:
        found.append("'Bearer '")
    return found
