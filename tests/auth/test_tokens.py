"""Token service: key rotation by `kid`, asymmetric mode with JWKS, password hashing."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt
from pydantic import SecretStr

from service.auth.passwords import PasswordHasher
from service.auth.tokens import VERIFIED_CACHE_SIZE, InvalidTokenError, TokenService
from service.infra.config import Settings
from service.main import create_app
from service.rules.scopes import Scope
from tests.support.auth import bearer, login
from tests.support.settings import ADMIN_PASSWORD, es256_key_file


def _pair(service: TokenService, username: str, scopes: frozenset[Scope], version: str) -> Any:
    """A token pair of a session that ends in an hour."""
    ends = int(time.time()) + 3600
    return service.issue_pair(username, scopes, version, session="s1", session_ends_at=ends)


def _with(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(update=update)


def test_rotated_key_still_verifies_and_retired_key_is_refused(settings: Settings) -> None:
    old = TokenService(settings)
    token = _pair(old, "alice", frozenset({Scope.PREDICT}), "v1").access_token
    new_secret = SecretStr(secrets.token_urlsafe(48))
    rotated = TokenService(
        _with(settings, jwt_secret=new_secret, jwt_previous_secrets=settings.jwt_secret)
    )
    assert rotated.decode(token, "access").subject == "alice"
    fresh = _pair(rotated, "alice", frozenset({Scope.PREDICT}), "v1").access_token
    assert jwt.get_unverified_header(fresh)["kid"] != jwt.get_unverified_header(token)["kid"]
    retired = TokenService(_with(settings, jwt_secret=new_secret))
    with pytest.raises(InvalidTokenError, match="unknown_key"):
        retired.decode(token, "access")
    assert retired.decode(fresh, "access").subject == "alice"


def test_cached_token_is_still_checked_against_the_clock(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = TokenService(settings)
    token = _pair(service, "alice", frozenset({Scope.PREDICT}), "v1").access_token
    assert service.decode(token, "access").subject == "alice"
    assert service.decode(token, "access").subject == "alice"  # served from the cache
    with pytest.raises(InvalidTokenError, match="wrong_token_use"):
        service.decode(token, "refresh")
    later = time.time() + settings.access_token_ttl_seconds + 60
    monkeypatch.setattr("service.auth.tokens.time.time", lambda: later)
    with pytest.raises(InvalidTokenError, match="expired"):
        service.decode(token, "access")


def test_verified_cache_is_bounded(settings: Settings) -> None:
    service = TokenService(settings)
    tokens = [
        _pair(service, f"user{i}", frozenset(), "v").access_token
        for i in range(VERIFIED_CACHE_SIZE + 10)
    ]
    for token in tokens:
        service.decode(token, "access")
    assert len(service._verified) == VERIFIED_CACHE_SIZE
    assert service.decode(tokens[0], "access").subject == "user0"


async def test_rotation_over_http_keeps_sessions(
    settings: Settings, client: httpx.AsyncClient, app: FastAPI
) -> None:
    tokens = await login(client, "admin", ADMIN_PASSWORD)
    rotated_settings = _with(
        settings,
        jwt_secret=SecretStr(secrets.token_urlsafe(48)),
        jwt_previous_secrets=settings.jwt_secret,
    )
    rotated = create_app(rotated_settings)
    async with rotated.router.lifespan_context(rotated):
        transport = httpx.ASGITransport(app=rotated)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as other:
            me = await other.get("/users/me", headers=bearer(tokens["access_token"]))
            assert me.status_code == 200
            refreshed = await other.post(
                "/token/refresh", json={"refresh_token": tokens["refresh_token"]}
            )
            assert refreshed.status_code == 200


async def test_es256_mode_publishes_jwks(settings: Settings, tmp_path: Path) -> None:
    key_file = es256_key_file(tmp_path / "jwt-es256.pem")
    es_settings = _with(settings, jwt_algorithm="ES256", jwt_private_key_file=key_file)
    app = create_app(es_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            tokens = await login(http, "admin", ADMIN_PASSWORD)
            jwks = (await http.get("/.well-known/jwks.json")).json()
            assert len(jwks["keys"]) == 1
            published = jwks["keys"][0]
            assert published["kty"] == "EC"
            assert published["alg"] == "ES256"
            assert "d" not in published
            header = jwt.get_unverified_header(tokens["access_token"])
            assert header == {"alg": "ES256", "kid": published["kid"], "typ": "JWT"}
            # Another service verifies with the published key alone.
            claims = jwt.decode(
                tokens["access_token"],
                published,
                algorithms=["ES256"],
                audience=es_settings.jwt_audience,
                issuer=es_settings.jwt_issuer,
            )
            assert claims["sub"] == "admin"
            me = await http.get("/users/me", headers=bearer(tokens["access_token"]))
            assert me.status_code == 200


async def test_hs256_mode_publishes_no_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/.well-known/jwks.json")).json() == {"keys": []}


def test_es256_previous_public_key_verifies(settings: Settings, tmp_path: Path) -> None:
    old_key = es256_key_file(tmp_path / "old.pem")
    new_key = es256_key_file(tmp_path / "new.pem")
    old = TokenService(_with(settings, jwt_algorithm="ES256", jwt_private_key_file=old_key))
    token = _pair(old, "alice", frozenset(), "v").access_token
    new = TokenService(
        _with(
            settings,
            jwt_algorithm="ES256",
            jwt_private_key_file=new_key,
            jwt_previous_public_key_files=(str(old_key),),
        )
    )
    assert new.decode(token, "access").subject == "alice"
    assert len(new.jwks()["keys"]) == 2
    alone = TokenService(_with(settings, jwt_algorithm="ES256", jwt_private_key_file=new_key))
    with pytest.raises(InvalidTokenError):
        alone.decode(token, "access")


async def test_password_hasher_round_trip(settings: Settings) -> None:
    hasher = PasswordHasher(settings)
    stored = await hasher.hash("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert await hasher.verify("correct horse battery staple", stored) == (True, None)
    assert (await hasher.verify("wrong horse battery staple", stored))[0] is False
    assert await hasher.verify("anything at all", None) == (False, None)
