"""The one clock rule: a token is taken from `nbf - leeway` to `exp + leeway`, in float
seconds, by the decoder and the verified-token cache alike; a session record outlives the
last moment the rule could take any token of its session."""

from __future__ import annotations

import time
from datetime import datetime, tzinfo
from typing import Any

import httpx
import pytest
from jose import jwt
from redis.asyncio import Redis

from service.auth.sessions import RECORD_MARGIN_SECONDS
from service.auth.tokens import (
    LEEWAY_SECONDS,
    InvalidTokenError,
    TokenService,
    accepted_until,
)
from service.infra.config import Settings
from service.infra.keys import session_key
from service.rules.scopes import Scope


def _token(service: TokenService) -> tuple[str, dict[str, Any]]:
    pair = service.issue_pair(
        "alice",
        frozenset({Scope.PREDICT}),
        "v1",
        session="s1",
        session_ends_at=int(time.time()) + 3600,
    )
    return pair.access_token, jwt.get_unverified_claims(pair.access_token)


def test_the_leeway_is_at_most_five_seconds() -> None:
    assert 0 < LEEWAY_SECONDS <= 5


def _clocks_at(monkeypatch: pytest.MonkeyPatch, moment: float) -> None:
    """Both clocks a decode could read at `moment`: `time.time` (the clock rule's) and
    python-jose's `datetime.now` (its own whole-second checks, which must stay off)."""

    class _At(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
            return datetime.fromtimestamp(moment, tz)

    monkeypatch.setattr("service.auth.tokens.time.time", lambda: moment)
    monkeypatch.setattr("jose.jwt.datetime", _At)


@pytest.mark.parametrize("cached", [False, True], ids=["first-decode", "cache-hit"])
def test_expiry_holds_to_the_fraction_of_a_second(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, cached: bool
) -> None:
    """Every moment is judged by a worker that cached the token, or by one that never saw it
    (a fresh service each time)."""
    issuer = TokenService(settings)
    token, claims = _token(issuer)
    if cached:
        issuer.decode(token, "access")

    def worker() -> TokenService:
        return issuer if cached else TokenService(settings)

    last = accepted_until(claims["exp"])
    assert last == claims["exp"] + LEEWAY_SECONDS
    _clocks_at(monkeypatch, last)
    assert worker().decode(token, "access").subject == "alice"
    # python-jose alone compares whole seconds and would still take it until just under +1 s.
    for late in (0.001, 0.1, 0.5, 0.999):
        _clocks_at(monkeypatch, last + late)
        with pytest.raises(InvalidTokenError, match="expired"):
            worker().decode(token, "access")


def test_not_before_holds_to_the_fraction_of_a_second(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, claims = _token(TokenService(settings))
    first = claims["nbf"] - LEEWAY_SECONDS
    _clocks_at(monkeypatch, first - 0.001)
    with pytest.raises(InvalidTokenError, match="invalid"):
        TokenService(settings).decode(token, "access")
    _clocks_at(monkeypatch, first)
    assert TokenService(settings).decode(token, "access").subject == "alice"


@pytest.mark.parametrize("skew", [-2.0, 2.0], ids=["clock-behind", "clock-ahead"])
def test_instances_whose_clocks_differ_within_the_leeway_take_each_others_tokens(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """A token minted on an instance whose clock is `skew` seconds off, verified at once by
    a worker that never saw it: the leeway covers the difference."""
    token, claims = _token(TokenService(settings))
    _clocks_at(monkeypatch, claims["iat"] - skew)
    assert TokenService(settings).decode(token, "access").subject == "alice"
    _clocks_at(monkeypatch, claims["exp"] + LEEWAY_SECONDS - 0.5)
    assert TokenService(settings).decode(token, "access").subject == "alice"


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {},
        {"access_token_ttl_seconds": 5, "refresh_token_ttl_seconds": 5},
        {"access_token_ttl_seconds": 3600, "refresh_token_ttl_seconds": 60},
    ],
)
async def test_a_session_record_outlives_every_token_of_its_session(
    client: httpx.AsyncClient, user_tokens: dict[str, Any], redis: Redis
) -> None:
    claims = [jwt.get_unverified_claims(user_tokens[k]) for k in ("access_token", "refresh_token")]
    latest = max(c["exp"] for c in claims)
    ttl_ms = await redis.pttl(session_key("alice", claims[0]["sid"]))
    lives_until = time.time() + ttl_ms / 1000
    assert lives_until > accepted_until(latest) + RECORD_MARGIN_SECONDS - 1
