"""The token-attack suite: every way a bearer token can be wrong gets 401 (or 403 for scope)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwt

from service.auth.tokens import _hs_kid
from service.infra.config import Settings
from tests.support.auth import bearer, create_user, login
from tests.support.processes import BOTH_TRANSPORTS

pytestmark = BOTH_TRANSPORTS

PROTECTED = [("GET", "/users/me"), ("GET", "/model"), ("POST", "/predict")]
BODY = {"data": [5.1, 3.5, 1.4, 0.2]}


def forge(
    settings: Settings,
    genuine: dict[str, Any],
    *,
    key: str | None = None,
    algorithm: str = "HS256",
    kid: str | None = None,
    drop: tuple[str, ...] = (),
    **overrides: Any,
) -> str:
    assert settings.jwt_secret is not None
    secret = settings.jwt_secret.get_secret_value()
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice",
        "scope": "predict",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "token_use": "access",
        "ver": genuine["ver"],
        "sid": genuine["sid"],
        "sxp": genuine["sxp"],
    } | overrides
    for name in drop:
        claims.pop(name)
    headers = {"kid": kid or _hs_kid(key or secret)}
    return jwt.encode(claims, key or secret, algorithm=algorithm, headers=headers)


@pytest.fixture
def genuine(user_tokens: dict[str, Any]) -> dict[str, Any]:
    """The claims of alice's real access token: forged tokens name her real session."""
    claims: dict[str, Any] = jwt.get_unverified_claims(user_tokens["access_token"])
    return claims


async def assert_refused(client: httpx.AsyncClient, token: str) -> None:
    for method, path in PROTECTED:
        response = await client.request(method, path, headers=bearer(token), json=BODY)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")


async def assert_session_dead_but_login_works(
    client: httpx.AsyncClient, tokens: dict[str, Any]
) -> None:
    """Both tokens of the old session are refused; a new login gets a working token."""
    await assert_refused(client, tokens["access_token"])
    refresh = await client.post("/token/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refresh.status_code == 400
    fresh = await login(client, "alice", "user-password-for-tests")
    assert (await client.get("/users/me", headers=bearer(fresh["access_token"]))).status_code == 200


async def test_forged_token_with_real_key_is_accepted(
    client: httpx.AsyncClient, settings: Settings, genuine: dict[str, Any]
) -> None:
    """Control: the forging helper is right, so each refusal below is for its one defect."""
    token = forge(settings, genuine)
    for method, path in PROTECTED:
        response = await client.request(method, path, headers=bearer(token), json=BODY)
        assert response.status_code == 200, (path, response.text)


async def test_no_token(client: httpx.AsyncClient) -> None:
    for method, path in PROTECTED:
        response = await client.request(method, path, json=BODY)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer  x", "Bearer garbage", "Basic YWRtaW46YWRtaW4=", "Bearer a.b.c", "bearer"],
)
async def test_garbage(client: httpx.AsyncClient, header: str) -> None:
    response = await client.get("/users/me", headers={"Authorization": header})
    assert response.status_code == 401


async def test_alg_none(
    client: httpx.AsyncClient, settings: Settings, genuine: dict[str, Any]
) -> None:
    valid = forge(settings, genuine)
    header = {"alg": "none", "typ": "JWT", "kid": _hs_kid(settings.jwt_secret.get_secret_value())}  # type: ignore[union-attr]
    payload = jwt.get_unverified_claims(valid)

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    for token in (f"{b64(header)}.{b64(payload)}.", f"{b64(header)}.{b64(payload)}"):
        await assert_refused(client, token)


async def test_wrong_key(
    client: httpx.AsyncClient, settings: Settings, genuine: dict[str, Any]
) -> None:
    await assert_refused(client, forge(settings, genuine, key="another-secret-" + "x" * 40))
    real_kid = _hs_kid(settings.jwt_secret.get_secret_value())  # type: ignore[union-attr]
    token = forge(settings, genuine, key="another-secret-" + "x" * 40, kid=real_kid)
    await assert_refused(client, token)


async def test_tampered_payload(
    client: httpx.AsyncClient, settings: Settings, genuine: dict[str, Any]
) -> None:
    header, payload, signature = forge(settings, genuine).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "predict admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    await assert_refused(client, f"{header}.{forged}.{signature}")


async def test_expired(
    client: httpx.AsyncClient, settings: Settings, genuine: dict[str, Any]
) -> None:
    now = int(time.time())
    token = forge(settings, genuine, iat=now - 3600, nbf=now - 3600, exp=now - 60)
    await assert_refused(client, token)


async def test_not_yet_valid(
    client: httpx.AsyncClient, settings: Settings, genuine: dict[str, Any]
) -> None:
    now = int(time.time())
    await assert_refused(client, forge(settings, genuine, nbf=now + 600, exp=now + 1200))


@pytest.mark.parametrize(
    "claim", ["exp", "jti", "sub", "iat", "nbf", "iss", "aud", "ver", "sid", "sxp"]
)
async def test_missing_claim(
    client: httpx.AsyncClient, settings: Settings, genuine: dict[str, Any], claim: str
) -> None:
    await assert_refused(client, forge(settings, genuine, drop=(claim,)))


async def test_wrong_issuer(
    client: httpx.AsyncClient, settings: Settings, genuine: dict[str, Any]
) -> None:
    await assert_refused(client, forge(settings, genuine, iss="https://evil.example"))


async def test_wrong_audience(
    client: httpx.AsyncClient, settings: Settings, genuine: dict[str, Any]
) -> None:
    await assert_refused(client, forge(settings, genuine, aud="another-service"))


async def test_rs_hs_confusion(
    client: httpx.AsyncClient, settings: Settings, genuine: dict[str, Any]
) -> None:
    """A token signed with an asymmetric algorithm is refused by the pinned HS256 list, and
    a key's public half used as an HMAC secret gets nowhere either."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    real_kid = _hs_kid(settings.jwt_secret.get_secret_value())  # type: ignore[union-attr]
    await assert_refused(client, forge(settings, genuine, key=pem, algorithm="ES256", kid=real_kid))
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # python-jose itself refuses to HMAC-sign with a PEM, so sign by hand, as an attacker would.
    header, payload, _ = forge(settings, genuine, kid=real_kid).split(".")
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    signature = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    await assert_refused(client, f"{header}.{payload}.{signature}")


async def test_refresh_token_is_not_an_access_token(
    client: httpx.AsyncClient, user_tokens: dict[str, Any]
) -> None:
    await assert_refused(client, user_tokens["refresh_token"])


async def test_revoked_after_logout(client: httpx.AsyncClient, user_tokens: dict[str, Any]) -> None:
    token = user_tokens["access_token"]
    assert (await client.post("/logout", headers=bearer(token))).status_code == 204
    await assert_refused(client, token)


async def test_disabled_user(
    client: httpx.AsyncClient, user_tokens: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    await client.patch("/users/alice", json={"disabled": True}, headers=admin_headers)
    await assert_refused(client, user_tokens["access_token"])


async def test_disable_then_enable_does_not_revive_tokens(
    client: httpx.AsyncClient, user_tokens: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    await client.patch("/users/alice", json={"disabled": True}, headers=admin_headers)
    await client.patch("/users/alice", json={"disabled": False}, headers=admin_headers)
    await assert_session_dead_but_login_works(client, user_tokens)


async def test_deleted_user(
    client: httpx.AsyncClient, user_tokens: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    assert (await client.delete("/users/alice", headers=admin_headers)).status_code == 204
    await assert_refused(client, user_tokens["access_token"])
    await create_user(client, admin_headers, "alice")
    await assert_refused(client, user_tokens["access_token"])


async def test_revoke_tokens(
    client: httpx.AsyncClient, user_tokens: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    response = await client.post("/users/alice/revoke-tokens", headers=admin_headers)
    assert response.status_code == 204
    await assert_session_dead_but_login_works(client, user_tokens)


async def test_missing_scope_is_403(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await create_user(client, admin_headers, "viewer", scopes=[])
    tokens = await login(client, "viewer", "user-password-for-tests")
    headers = bearer(tokens["access_token"])
    response = await client.post("/predict", json=BODY, headers=headers)
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert (await client.get("/users", headers=headers)).status_code == 403
    assert (await client.get("/model", headers=headers)).status_code == 200


async def test_oversized_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/users/me", headers=bearer("a" * 5000))
    assert response.status_code == 401


async def test_revoked_token_without_the_scope_is_401_not_403(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await create_user(client, admin_headers, "viewer2", scopes=[])
    tokens = await login(client, "viewer2", "user-password-for-tests")
    headers = bearer(tokens["access_token"])
    assert (await client.post("/logout", headers=headers)).status_code == 204
    assert (await client.post("/predict", json=BODY, headers=headers)).status_code == 401
    assert (await client.get("/users", headers=headers)).status_code == 401
