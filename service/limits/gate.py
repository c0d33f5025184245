"""The gate: one Redis round trip per request that checks the caller's token state and/or
counts the request against a rate-limit policy, atomically (`lua/gate.lua`).

Time comes from Redis, so every instance shares one clock; the answer is a typed
`GateDecision`, never a raw script reply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum

from redis.asyncio import Redis

from service.auth.tokens import TokenClaims
from service.infra.keys import rate_key, revoked_key, user_key
from service.infra.redis import Scripts
from service.rules.policies import Policy
from service.rules.rates import Rate


class GateStatus(IntEnum):
    ADMITTED = 0
    RATE_LIMITED = 1
    REVOKED = 2  # the token itself was revoked (logout)
    USER_STATE = 3  # its user is gone or disabled, or the user's tokens were revoked since


@dataclass(slots=True)
class GateDecision:
    status: GateStatus
    limit: int = 0
    window_ms: int = 0
    remaining: int = 0
    reset_ms: int = 0

    @property
    def counted(self) -> bool:
        """Whether the request counted against the policy (admitted or refused for rate)."""
        return self.status in (GateStatus.ADMITTED, GateStatus.RATE_LIMITED)


class Gate:
    def __init__(self, redis: Redis, scripts: Scripts) -> None:
        self._redis = redis
        self._scripts = scripts

    async def check_token(self, claims: TokenClaims) -> GateStatus:
        """Whether a verified token may still be used: not revoked, its user unchanged."""
        return (await self._run(claims=claims)).status

    async def count(
        self, policy: Policy, identity: str, rate: Rate, claims: TokenClaims | None
    ) -> GateDecision:
        """Count one request of `identity` against `policy` (checking `claims` first, when
        given, in the same round trip; a per-user policy then applies the user's own rate)."""
        return await self._run(
            claims=claims, key=rate_key(policy.name, identity), rate=rate, per_user=policy.per_user
        )

    async def forget(self, policy: Policy, identity: str) -> None:
        """Drop a counter, e.g. a deleted user's: whoever gets the name later starts afresh."""
        await self._redis.delete(rate_key(policy.name, identity))

    async def _run(
        self,
        *,
        claims: TokenClaims | None,
        key: str | None = None,
        rate: Rate | None = None,
        per_user: bool = False,
    ) -> GateDecision:
        keys: list[str] = []
        if claims is not None:
            keys += [user_key(claims.subject), revoked_key(claims.jti)]
        if key is not None:
            keys.append(key)
        args = [
            "1" if claims is not None else "0",
            "1" if rate is not None else "0",
            claims.version if claims is not None else "",
            rate.limit if rate else 0,
            rate.window * 1000 if rate else 0,
            os.urandom(8).hex(),
            "1" if per_user else "0",
        ]
        reply = await self._scripts.gate(keys=keys, args=args)
        return GateDecision(GateStatus(int(reply[0])), *(int(v) for v in reply[1:]))
