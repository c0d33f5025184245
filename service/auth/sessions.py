"""Sessions: what a password login starts and what logout ends.

One Redis hash per live session holds its user, the id of its one valid refresh token, when
it was created and last refreshed, when it ends at the latest, and the login's client
address and User-Agent; a sorted set per user indexes them by creation. Every token of a
session carries its id (`sid`): the gate refuses a token whose session record is gone, so
ending a session is deleting its record, on every instance at once. Redis therefore holds
O(live sessions), never a key per refresh or per logout.

A record outlives every token of its session (`accepted_until` of the latest expiry, plus
a margin), so a token can never be accepted after its record has gone.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import Enum
from typing import cast

from service.auth.tokens import (
    InvalidTokenError,
    TokenClaims,
    TokenPair,
    TokenService,
    accepted_until,
)
from service.infra.keys import session_key, sessions_key, user_key
from service.infra.redis import RedisClient, Replication, Scripts
from service.rules.scopes import Scope

# Beyond the clock rule's last moment: covers clock skew between instances and Redis.
RECORD_MARGIN_SECONDS = 10
USER_AGENT_MAX = 256


class Rotation(Enum):
    """What became of a refresh token presented for rotation."""

    ROTATED = 0
    ENDED = 2  # its session was ended (logout, revocation, idle or age limit)
    STALE = 3  # its user is gone or disabled, or the user's tokens were revoked since
    REUSED = 4  # it had already been rotated: its session is ended now


_ROTATION_REASONS = {
    Rotation.ENDED: "session_ended",
    Rotation.STALE: "user",
    Rotation.REUSED: "refresh_reuse",
}


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    created_at: float
    last_used_at: float
    expires_at: float
    ip: str
    user_agent: str


def new_session_id() -> str:
    return secrets.token_urlsafe(16)


def _record_ttl_ms(pair: TokenPair, now: float) -> int:
    return max(1, int((accepted_until(pair.latest_expiry) + RECORD_MARGIN_SECONDS - now) * 1000))


def _printable(text: str) -> str:
    """A header value as shown back to its owner: printable, bounded."""
    return "".join(ch for ch in text if ch.isprintable())[:USER_AGENT_MAX]


class RefreshRefused(Exception):
    """A refresh token that gets no new tokens; `reason` is a short machine-readable cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionStore:
    """Starts, refreshes, lists and ends sessions; issues their tokens."""

    def __init__(
        self,
        redis: RedisClient,
        scripts: Scripts,
        tokens: TokenService,
        *,
        replication: Replication,
        max_per_user: int,
        max_age_seconds: int,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._replication = replication
        self._tokens = tokens
        self._max_per_user = max_per_user
        self._max_age = max_age_seconds

    async def start(
        self,
        username: str,
        scopes: frozenset[Scope],
        version: str,
        *,
        ip: str,
        user_agent: str,
    ) -> TokenPair | None:
        """A new session's first tokens, for a user whose password was just checked; None
        when the user was changed, disabled or deleted meanwhile."""
        sid = new_session_id()
        ends_at = int(time.time()) + self._max_age
        pair = self._tokens.issue_pair(
            username, scopes, version, session=sid, session_ends_at=ends_at
        )
        started = await self._record(username, version, sid, pair, ip, user_agent)
        return pair if started else None

    def grant_of(self, refresh_token: str) -> TokenClaims:
        """The verified claims of a refresh token (offline; its session is not checked).
        Raises RefreshRefused."""
        try:
            return self._tokens.decode(refresh_token, "refresh")
        except InvalidTokenError as exc:
            raise RefreshRefused(exc.reason) from None

    async def refresh(
        self, claims: TokenClaims, access_scopes: frozenset[Scope] | None = None
    ) -> TokenPair:
        """New tokens for the session of the refresh token `claims` came from, which dies:
        it works once, and presenting a spent one ends its session. The new access token
        may carry fewer scopes (`access_scopes`). Raises RefreshRefused."""
        if claims.session_ends_at <= time.time():
            raise RefreshRefused("session_expired")
        pair = self._tokens.issue_pair(
            claims.subject,
            claims.scopes,
            claims.version,
            session=claims.session,
            session_ends_at=claims.session_ends_at,
            access_scopes=access_scopes,
        )
        outcome = await self._rotate(claims, pair)
        if outcome is not Rotation.ROTATED:
            raise RefreshRefused(_ROTATION_REASONS[outcome])
        return pair

    async def _record(
        self, username: str, version: str, sid: str, pair: TokenPair, ip: str, user_agent: str
    ) -> bool:
        now = time.time()
        created_ms = str(int(now * 1000))
        fields = {
            "refresh_jti": pair.refresh_jti,
            "created": created_ms,
            "last_used": created_ms,
            "expires": str(pair.refresh_expires_at * 1000),
            "ip": ip,
            "user_agent": _printable(user_agent),
        }
        started = await self._scripts.session_start(
            keys=[user_key(username), sessions_key(username), session_key(username, sid)],
            args=[
                version,
                self._max_per_user,
                sid,
                created_ms,
                _record_ttl_ms(pair, now),
                *(item for pair_ in fields.items() for item in pair_),
            ],
        )
        return bool(started)

    async def _rotate(self, refresh: TokenClaims, pair: TokenPair) -> Rotation:
        now = time.time()
        username, sid = refresh.subject, refresh.session
        outcome = await self._scripts.session_rotate(
            keys=[user_key(username), sessions_key(username), session_key(username, sid)],
            args=[
                refresh.version,
                refresh.jti,
                sid,
                pair.refresh_jti,
                int(now * 1000),
                pair.refresh_expires_at * 1000,
                _record_ttl_ms(pair, now),
            ],
        )
        return Rotation(int(outcome))

    async def end(self, username: str, *sids: str) -> int:
        """End these sessions of the user; returns how many were live. Answered once the
        replicas have it (see Replication)."""
        if not sids:
            return 0
        keys = [sessions_key(username), *(session_key(username, sid) for sid in sids)]
        return int(await self._replication.run(self._scripts.session_end, keys, list(sids)))

    async def end_all(self, username: str) -> int:
        """End every session of the user."""
        sids = cast(list[str], await self._redis.zrange(sessions_key(username), 0, -1))
        return await self.end(username, *sids)

    async def list(self, username: str) -> list[Session]:
        """The user's live sessions, oldest first."""
        sids = cast(list[str], await self._redis.zrange(sessions_key(username), 0, -1))
        if not sids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hgetall(session_key(username, sid))
            records = cast(list[dict[str, str]], await pipe.execute())
        return [
            Session(
                sid=sid,
                created_at=int(record["created"]) / 1000,
                last_used_at=int(record["last_used"]) / 1000,
                expires_at=int(record["expires"]) / 1000,
                ip=record.get("ip", ""),
                user_agent=record.get("user_agent", ""),
            )
            for sid, record in zip(sids, records, strict=True)
            if record.get("created")
        ]
