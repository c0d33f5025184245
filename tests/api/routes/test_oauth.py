"""The OAuth 2.0 surface, request by request: the token endpoint (RFC 6749 §4.3, §6, §5.2
errors), revocation (RFC 7009) and the server metadata (RFC 8414).

Real client libraries against a real server: tests/serving/test_oauth_clients.py.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

from service.infra.config import Settings
from service.main import create_app
from tests.support.auth import bearer, login
from tests.support.processes import GunicornFactory, RedisProcess
from tests.support.settings import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    GENEROUS_RATES,
    USER_PASSWORD,
    es256_key_file,
)

ADMIN = {"grant_type": "password", "username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
PREDICT_BODY = {"data": [5.1, 3.5, 1.4, 0.2]}


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": f"Basic {base64.b64encode(credentials.encode()).decode()}"}


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error
    assert body["error_description"]
    assert response.headers["cache-control"] == "no-store"
    return body


# The token endpoint: what it requires.


async def test_grant_type_is_required(client: httpx.AsyncClient) -> None:
    body = assert_oauth_error(
        await client.post("/token", data={"username": "admin", "password": "x"}),
        400,
        "invalid_request",
    )
    assert "grant_type" in body["error_description"]


@pytest.mark.parametrize("grant_type", ["client_credentials", "urn:example:weird-grant-9f3a"])
async def test_unknown_grant_type_is_named_as_unsupported_not_echoed(
    client: httpx.AsyncClient, grant_type: str
) -> None:
    response = await client.post("/token", data={**ADMIN, "grant_type": grant_type})
    body = assert_oauth_error(response, 400, "unsupported_grant_type")
    assert body["error_description"] == "supported grant types: password, refresh_token"
    assert grant_type not in response.text


@pytest.mark.parametrize(
    ("form", "missing"),
    [
        ({"grant_type": "password", "password": ADMIN_PASSWORD}, "username"),
        ({"grant_type": "password", "username": ADMIN_USERNAME}, "password"),
        ({"grant_type": "password", "username": ADMIN_USERNAME, "password": ""}, "password"),
        ({"grant_type": "refresh_token"}, "refresh_token"),
    ],
)
async def test_a_missing_parameter_is_invalid_request(
    client: httpx.AsyncClient, form: dict[str, str], missing: str
) -> None:
    body = assert_oauth_error(await client.post("/token", data=form), 400, "invalid_request")
    assert body["error_description"] == f"{missing} is required"


async def test_a_repeated_parameter_is_invalid_request(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/token",
        content=f"grant_type=password&username=admin&username=x&password={ADMIN_PASSWORD}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_oauth_error(response, 400, "invalid_request")


async def test_unknown_parameters_are_ignored(client: httpx.AsyncClient) -> None:
    """requests-oauthlib's automatic refresh posts `allow_redirects=True` in the form."""
    response = await client.post("/token", data={**ADMIN, "allow_redirects": "True"})
    assert response.status_code == 200


async def test_wrong_credentials_are_one_invalid_grant(client: httpx.AsyncClient) -> None:
    wrong_password = await client.post("/token", data={**ADMIN, "password": "x" * 12})
    unknown_user = await client.post("/token", data={**ADMIN, "username": "nobody-here"})
    for response in (wrong_password, unknown_user):
        assert_oauth_error(response, 400, "invalid_grant")
        assert "www-authenticate" not in response.headers
    assert wrong_password.content == unknown_user.content


# Client identity: clients are public.


@pytest.mark.parametrize(
    ("headers", "extra"),
    [
        (basic(":"), {}),  # Swagger UI's default: Basic with an empty id and secret
        (basic("my-cli:"), {}),  # requests-oauthlib's default: the id, an empty secret
        (basic("my%20cli:"), {"client_id": "my cli"}),  # id form-encoded (§2.3.1), same id
        ({}, {"client_id": "my-cli"}),  # authlib's default: the id in the body
        ({}, {"client_id": "None"}),  # authlib with no client_id at all sends this
        ({"Authorization": "Bearer some-token"}, {}),  # not client authentication
    ],
)
async def test_a_public_client_identity_is_accepted_and_ignored(
    client: httpx.AsyncClient, headers: dict[str, str], extra: dict[str, str]
) -> None:
    response = await client.post("/token", data={**ADMIN, **extra}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "bearer"


async def test_a_client_secret_is_refused(client: httpx.AsyncClient) -> None:
    in_header = await client.post("/token", data=ADMIN, headers=basic("my-cli:s3cret"))
    body = assert_oauth_error(in_header, 401, "invalid_client")
    assert in_header.headers["www-authenticate"].startswith("Basic")
    assert "public" in body["error_description"]
    malformed = await client.post("/token", data=ADMIN, headers={"Authorization": "Basic %%%"})
    assert_oauth_error(malformed, 401, "invalid_client")
    in_body = await client.post(
        "/token", data={**ADMIN, "client_id": "my-cli", "client_secret": "s3cret"}
    )
    assert_oauth_error(in_body, 400, "invalid_client")
    assert "www-authenticate" not in in_body.headers
    revoke = await client.post("/revoke", data={"token": "x"}, headers=basic("my-cli:s3cret"))
    assert_oauth_error(revoke, 401, "invalid_client")


async def test_two_different_client_ids_are_invalid_request(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/token", data={**ADMIN, "client_id": "one"}, headers=basic("other:")
    )
    assert_oauth_error(response, 400, "invalid_request")


# Scope (RFC 6749 §3.3).


async def test_scope_narrows_the_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/token", data={**ADMIN, "scope": "predict"})
    assert response.status_code == 200
    assert response.json()["scope"] == "predict"
    headers = bearer(response.json()["access_token"])
    assert (await client.post("/predict", json=PREDICT_BODY, headers=headers)).status_code == 200
    assert (await client.get("/users", headers=headers)).status_code == 403


async def test_scope_beyond_the_grant_is_invalid_scope(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    for scope in ("predict admin", "admin", "no-such-scope"):
        response = await client.post(
            "/token",
            data={"grant_type": "password", "username": "alice", "password": USER_PASSWORD}
            | {"scope": scope},
        )
        assert_oauth_error(response, 400, "invalid_scope")
    refresh = await client.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": user_tokens["refresh_token"],
            "scope": "admin",
        },
    )
    assert_oauth_error(refresh, 400, "invalid_scope")


async def test_refresh_may_narrow_the_access_token_not_the_grant(
    client: httpx.AsyncClient, admin_tokens: dict[str, Any]
) -> None:
    narrowed = await client.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": admin_tokens["refresh_token"],
            "scope": "predict",
        },
    )
    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.headers["cache-control"] == "no-store"
    pair = narrowed.json()
    assert pair["scope"] == "predict"
    assert (await client.get("/users", headers=bearer(pair["access_token"]))).status_code == 403
    # The new refresh token keeps the grant's scope (RFC 6749 §6).
    full = await client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]}
    )
    assert full.json()["scope"] == "admin predict"
    assert (await client.get("/users", headers=bearer(full.json()["access_token"]))).is_success


async def test_a_rotated_refresh_token_is_invalid_grant(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    form = {"grant_type": "refresh_token", "refresh_token": user_tokens["refresh_token"]}
    assert (await client.post("/token", data=form)).status_code == 200
    body = assert_oauth_error(await client.post("/token", data=form), 400, "invalid_grant")
    assert "reuse" in body["error_description"]
    garbage = {"grant_type": "refresh_token", "refresh_token": "not-a-token"}
    assert_oauth_error(await client.post("/token", data=garbage), 400, "invalid_grant")


async def test_the_json_refresh_alias(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    first = await client.post(
        "/token/refresh", json={"refresh_token": user_tokens["refresh_token"]}
    )
    assert first.status_code == 200
    assert first.headers["cache-control"] == "no-store"
    assert set(first.json()) == {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "scope",
    }
    again = await client.post(
        "/token/refresh", json={"refresh_token": user_tokens["refresh_token"]}
    )
    assert_oauth_error(again, 400, "invalid_grant")


# Revocation (RFC 7009).


@pytest.mark.parametrize(
    ("which", "hint"),
    [
        ("refresh_token", "refresh_token"),
        ("refresh_token", None),
        ("access_token", "access_token"),
        ("access_token", None),
        ("access_token", "refresh_token"),  # a wrong hint only changes the search order
    ],
)
async def test_revoking_either_token_ends_the_session(
    client: httpx.AsyncClient, user_tokens: dict[str, Any], which: str, hint: str | None
) -> None:
    form = {"token": user_tokens[which]} | ({"token_type_hint": hint} if hint else {})
    response = await client.post("/revoke", data=form)
    assert response.status_code == 200
    assert response.json() == {}
    assert response.headers["cache-control"] == "no-store"
    me = await client.get("/users/me", headers=bearer(user_tokens["access_token"]))
    assert me.status_code == 401
    refresh = await client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": user_tokens["refresh_token"]},
    )
    assert_oauth_error(refresh, 400, "invalid_grant")
    # Revoking it again, like any token that is not live, is still a 200.
    assert (await client.post("/revoke", data=form)).status_code == 200


@pytest.mark.parametrize(
    "form",
    [
        {"token": "garbage"},
        {"token": "a.b.c", "token_type_hint": "refresh_token"},
        {"token": "garbage", "token_type_hint": "bogus_hint"},
        {"token": "garbage", "client_id": "my-cli"},
    ],
)
async def test_revoking_what_is_not_a_live_token_is_200(
    client: httpx.AsyncClient, form: dict[str, str]
) -> None:
    response = await client.post("/revoke", data=form)
    assert response.status_code == 200
    assert response.json() == {}


async def test_revoke_without_a_token_is_invalid_request(client: httpx.AsyncClient) -> None:
    for form in ({}, {"token_type_hint": "refresh_token"}, {"token": ""}):
        response = await client.post("/revoke", data=form)
        assert_oauth_error(response, 400, "invalid_request")
    assert_oauth_error(await client.post("/revoke", json={"token": "x"}), 400, "invalid_request")


async def test_revoking_one_session_leaves_the_others(client: httpx.AsyncClient) -> None:
    first = await login(client, ADMIN_USERNAME, ADMIN_PASSWORD)
    second = await login(client, ADMIN_USERNAME, ADMIN_PASSWORD)
    assert (await client.post("/revoke", data={"token": first["refresh_token"]})).is_success
    assert (await client.get("/users/me", headers=bearer(first["access_token"]))).is_error
    assert (await client.get("/users/me", headers=bearer(second["access_token"]))).is_success


# Rate limits answer as OAuth errors on the token endpoint.


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limit_login": "1/minute", "rate_limit_public": "1/minute"}]
)
async def test_a_429_on_the_token_endpoint_is_temporarily_unavailable(
    client: httpx.AsyncClient,
) -> None:
    tokens = await login(client, ADMIN_USERNAME, ADMIN_PASSWORD)
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    assert (await client.post("/token", data=refresh)).status_code == 200
    for form in (ADMIN, refresh):
        response = await client.post("/token", data=form)
        body = assert_oauth_error(response, 429, "temporarily_unavailable")
        retry_after = int(response.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert body["error_description"] == f"too many requests: retry after {retry_after} s"


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_public": "1/minute"}])
async def test_a_429_at_revocation_and_the_json_refresh_is_an_oauth_error_too(
    client: httpx.AsyncClient,
) -> None:
    tokens = await login(client, ADMIN_USERNAME, ADMIN_PASSWORD)
    assert (await client.post("/revoke", data={"token": "unknown"})).status_code == 200
    revoke = await client.post("/revoke", data={"token": tokens["refresh_token"]})
    refresh = await client.post("/token/refresh", json={"refresh_token": tokens["refresh_token"]})
    for response in (revoke, refresh):
        assert_oauth_error(response, 429, "temporarily_unavailable")
        assert int(response.headers["retry-after"]) >= 1


# Server metadata (RFC 8414).


def _validate_all_but_response_types(doc: dict[str, Any]) -> None:
    """authlib's `validate()`, minus its one check this server cannot pass: RFC 8414 makes
    `response_types_supported` REQUIRED, and authlib wants it non-empty, but with no
    authorization endpoint there is no response type to list: the server publishes []."""
    metadata = AuthorizationServerMetadata(doc)
    with pytest.raises(ValueError, match="response_types_supported"):
        metadata.validate()
    for key in metadata.REGISTRY_KEYS:
        if key != "response_types_supported":
            getattr(metadata, f"validate_{key}")()


async def test_metadata_document(client: httpx.AsyncClient) -> None:
    response = await client.get("https://api.example/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    doc = response.json()
    assert doc == {
        "issuer": "https://api.example",
        "token_endpoint": "https://api.example/token",
        "revocation_endpoint": "https://api.example/revoke",
        "grant_types_supported": ["password", "refresh_token"],
        "response_types_supported": [],
        "scopes_supported": ["predict", "admin"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
    }
    _validate_all_but_response_types(doc)
    # Over plain http, only a loopback issuer passes authlib's https checks.
    plain = (await client.get("http://api.example/.well-known/oauth-authorization-server")).json()
    with pytest.raises(ValueError, match="issuer"):
        AuthorizationServerMetadata(plain).validate_issuer()


async def test_metadata_names_the_jwks_only_when_keys_are_public(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    hs256 = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert "jwks_uri" not in hs256
    key_file = es256_key_file(tmp_path / "k.pem")
    es256 = settings.model_copy(update={"jwt_algorithm": "ES256", "jwt_private_key_file": key_file})
    app = create_app(es256)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://api.example") as http:
            doc = (await http.get("/.well-known/oauth-authorization-server")).json()
            assert doc["jwks_uri"] == "https://api.example/.well-known/jwks.json"
            _validate_all_but_response_types(doc)
            keys = (await http.get(doc["jwks_uri"])).json()["keys"]
            assert [key["alg"] for key in keys] == ["ES256"]


def test_metadata_urls_follow_a_trusted_proxys_scheme(
    gunicorn_factory: GunicornFactory, module_redis: RedisProcess
) -> None:
    """Over gunicorn: 127.0.0.1 is a trusted proxy (the default), so its X-Forwarded-Proto
    sets the scheme of every URL in the document."""
    rates = {name.upper(): rate for name, rate in GENEROUS_RATES.items()}
    server = gunicorn_factory(module_redis.url, **rates)
    path = "/.well-known/oauth-authorization-server"
    direct = httpx.get(f"{server.url}{path}").json()
    host = server.url.removeprefix("http://")
    assert direct["issuer"] == server.url
    assert direct["token_endpoint"] == f"{server.url}/token"
    forwarded = httpx.get(f"{server.url}{path}", headers={"X-Forwarded-Proto": "https"}).json()
    assert forwarded["issuer"] == f"https://{host}"
    assert forwarded["token_endpoint"] == f"https://{host}/token"
    assert forwarded["revocation_endpoint"] == f"https://{host}/revoke"
    _validate_all_but_response_types(forwarded)
