"""Inputs an attacker controls: fields of any size at the login, refresh and logout routes
get a 4xx, never a 5xx, and no error anywhere repeats what was sent."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.support.auth import bearer

# A value no answer has any reason to contain, with a Unicode space (a past 422 echoed one).
CANARY = "zq\u2003canary7731"
ASCII_CANARY = "zqcanary7731"  # for headers
SIZES = [1, 3_000, 5_000, 60_000]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("field", ["username", "password", "scope", "client_id", "grant_type"])
async def test_login_form_fields_of_any_size(
    client: httpx.AsyncClient, field: str, size: int
) -> None:
    """Finding 7: a password of a few KB answered 500."""
    form = {"grant_type": "password", "username": "admin", "password": "x" * 12} | {
        field: "a" * size
    }
    response = await client.post("/token", data=form)
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize("size", SIZES)
async def test_refresh_and_logout_fields_of_any_size(
    client: httpx.AsyncClient, admin_headers: dict[str, str], size: int
) -> None:
    refresh = await client.post("/token/refresh", json={"refresh_token": "a" * size})
    assert 400 <= refresh.status_code < 500, refresh.text
    logout = await client.post("/logout", json={"refresh_token": "a" * size}, headers=admin_headers)
    assert logout.status_code in (204, 422), logout.text
    assert 400 <= (await client.get("/users/me", headers=bearer("a" * size))).status_code < 500


def _body(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Every property of a request body, each set to the canary."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    return dict.fromkeys(schema.get("properties", {}), CANARY)


def _requests(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    components = openapi["components"]["schemas"]
    requests = []
    for template, operations in openapi["paths"].items():
        path = re.sub(r"\{[^}]+\}", CANARY, template)
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            kwargs: dict[str, Any] = {"params": {"q": CANARY}}
            if "application/json" in content:
                kwargs["json"] = _body(content["application/json"]["schema"], components)
            elif "application/x-www-form-urlencoded" in content:
                schema = content["application/x-www-form-urlencoded"]["schema"]
                kwargs["data"] = _body(schema, components)
            requests.append((method.upper(), path, kwargs))
    return requests


async def test_no_error_repeats_what_was_sent(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """Every operation, with the canary in the path, the query, every body field, a raw
    body and the token: no answer contains it."""
    sent = 0
    for method, path, kwargs in _requests(app.openapi()):
        for headers in (admin_headers, bearer(ASCII_CANARY)):
            answers = [
                await client.request(method, path, headers=headers, **kwargs),
                await client.request(
                    method,
                    path,
                    content=f'{{"{CANARY}": "{CANARY}"'.encode(),
                    headers=headers | {"Content-Type": "application/json"},
                ),
            ]
            for response in answers:
                sent += 1
                assert response.status_code < 500, (method, path, response.text)
                assert CANARY not in response.text, (method, path, response.text)
                assert "canary7731" not in response.text, (method, path, response.text)
    assert sent > 40


@pytest.mark.parametrize("rate", ["\u20031/minute", "1/minute\u2003", "\u00a07/hour"])
async def test_a_refused_rate_is_not_repeated(
    client: httpx.AsyncClient, admin_headers: dict[str, str], rate: str
) -> None:
    """Finding 7: JSON Schema's `\\s` takes Unicode spaces that the rate syntax refuses, and
    the 422 that followed quoted the value back."""
    response = await client.patch("/users/admin", json={"rate_limit": rate}, headers=admin_headers)
    assert response.status_code == 422
    body = response.content.decode()
    assert rate not in body
    assert rate.strip() not in body
    assert "\\u2003" not in body
    assert "\\u00a0" not in body
