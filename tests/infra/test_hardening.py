"""Security headers on every answer, and an unhandled exception as a clean JSON 500."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from service.infra.middleware import ObservabilityMiddleware
from tests.support.settings import ADMIN_PASSWORD

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
CSP = "default-src 'none'; frame-ancestors 'none'"


def assert_hardened(response: httpx.Response) -> None:
    for name, expected in SECURITY_HEADERS.items():
        assert response.headers.get(name) == expected, (response.request.url, name)
    assert "server" not in response.headers
    assert response.headers["x-request-id"]


async def test_every_kind_of_answer_carries_the_security_headers(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    answers = [
        await client.get("/"),
        await client.get("/healthz"),
        await client.get("/metrics"),
        await client.get("/users/me"),  # 401
        await client.get("/users", headers=user_headers),  # 403
        await client.get("/nowhere"),  # 404
        await client.put("/predict"),  # 405
        await client.post("/predict", json={"data": "x"}, headers=user_headers),  # 422
        await client.post("/predict", content=b"0" * 70_000, headers=user_headers),  # 413
    ]
    assert [r.status_code for r in answers] == [200, 200, 200, 401, 403, 404, 405, 422, 413]
    for response in answers:
        assert_hardened(response)
        assert response.headers["content-security-policy"] == CSP


async def test_docs_pages_bring_their_own_policy(client: httpx.AsyncClient) -> None:
    """Swagger UI and ReDoc run scripts: their pages replace the JSON policy with one of
    their own (exactly one policy: two would both be enforced). See tests/api/test_docs.py."""
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        response = await client.get(path)
        assert response.status_code == 200
        assert_hardened(response)
        (policy,) = response.headers.get_list("content-security-policy")
        assert policy.startswith("default-src 'none'; script-src 'self'")
    assert "swagger-ui" in (await client.get("/docs")).text


async def test_token_responses_are_not_stored(client: httpx.AsyncClient) -> None:
    login = await client.post(
        "/token", data={"grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD}
    )
    assert login.headers["cache-control"] == "no-store"
    refreshed = await client.post(
        "/token/refresh", json={"refresh_token": login.json()["refresh_token"]}
    )
    assert refreshed.status_code == 200
    assert refreshed.headers["cache-control"] == "no-store"
    assert_hardened(refreshed)


async def test_unhandled_exception_is_a_json_500_with_the_request_id(
    app: FastAPI, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom() -> None:
        raise RuntimeError("internal detail: /etc/secret-path")

    app.add_api_route("/test-boom", boom)
    caplog.set_level(logging.INFO)
    response = await client.get("/test-boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error", "request_id": "boom-1"}
    assert "secret-path" not in response.text
    assert "Traceback" not in response.text
    assert_hardened(response)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)
    access = [r for r in caplog.records if r.name == "service.access"]
    assert access[-1].fields["status"] == 500  # type: ignore[attr-defined]
    assert access[-1].fields["route"] == "/test-boom"  # type: ignore[attr-defined]


async def test_exception_after_the_response_started_is_logged_not_patched_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Headers already went out as 200: the middleware logs the error and returns without
    finishing the body, so the server cuts the connection (the one honest signal left)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("mid-stream")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/stream",
        "headers": [],
        "client": None,
    }
    await ObservabilityMiddleware(app)(scope, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[-1]["more_body"] is True
    assert any(r.exc_info and r.levelno == logging.ERROR for r in caplog.records)
