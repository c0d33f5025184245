"""Ending tokens before they expire: refresh-token rotation with reuse detection, and the
revocation of single tokens at logout. Every write is atomic in Redis, so any instance sees
it at once."""

from __future__ import annotations

from enum import Enum

from redis.asyncio import Redis

from service.auth.tokens import TokenClaims
from service.auth.users import new_token_version
from service.infra.keys import revoked_key, used_refresh_key, user_key
from service.infra.redis import Scripts


class Rotation(Enum):
    """What became of a refresh token presented for rotation."""

    ROTATED = 0
    REVOKED = 2  # the token itself was revoked (logout)
    STALE = 3  # its user is gone or disabled, or the user's tokens were revoked since
    REUSED = 4  # it had already been used: every token of the user is now revoked


class Revocations:
    def __init__(self, redis: Redis, scripts: Scripts) -> None:
        self._redis = redis
        self._scripts = scripts

    async def rotate(self, refresh: TokenClaims) -> Rotation:
        """Spend a refresh token: it works once; presenting it again revokes the user."""
        outcome = await self._scripts.refresh(
            keys=[
                user_key(refresh.subject),
                revoked_key(refresh.jti),
                used_refresh_key(refresh.jti),
            ],
            args=[refresh.version, refresh.remaining_ms(), new_token_version()],
        )
        return Rotation(int(outcome))

    async def revoke(self, *tokens: TokenClaims) -> None:
        """Refuse these tokens from now until they expire."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for claims in tokens:
                pipe.set(revoked_key(claims.jti), "1", px=claims.remaining_ms())
            await pipe.execute()
