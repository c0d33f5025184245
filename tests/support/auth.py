"""Logging in as a client does, for tests: one way to get tokens, one way to present them."""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from tests.support.settings import USER_PASSWORD


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


class _SyncClient(Protocol):
    def post(self, url: str, *, data: dict[str, str]) -> Any: ...


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _tokens(response: _Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def _form(username: str, password: str) -> dict[str, str]:
    return {"grant_type": "password", "username": username, "password": password}


async def login(
    client: httpx.AsyncClient, username: str, password: str, *, base: str = ""
) -> dict[str, Any]:
    """POST /token (password grant) and return the token response; `base` prefixes the
    path when the client has no base URL."""
    return _tokens(await client.post(f"{base}/token", data=_form(username, password)))


def login_sync(
    client: _SyncClient, username: str, password: str, *, base: str = ""
) -> dict[str, Any]:
    """`login` for synchronous clients (httpx.Client, schemathesis' ASGI client, the
    `httpx` module itself with a `base` URL)."""
    return _tokens(client.post(f"{base}/token", data=_form(username, password)))


async def create_user(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    username: str,
    scopes: list[str] | None = None,
    password: str = USER_PASSWORD,
) -> None:
    body = {
        "username": username,
        "password": password,
        "scopes": ["predict"] if scopes is None else scopes,
    }
    response = await client.post("/users", json=body, headers=admin_headers)
    assert response.status_code == 201, response.text
