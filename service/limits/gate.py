"""The gate: one Redis round trip per request that checks the caller's token state and/or
counts the request against a rate-limit policy, atomically (`lua/gate.lua`). The calls of a
worker's concurrent requests share their round trips (`AutoPipeline`).

Time comes from Redis, so every instance shares one clock; the answer is a typed
`GateDecision`, never a raw script reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from service.auth.tokens import TokenClaims
from service.infra.autopipeline import AutoPipeline
from service.infra.keys import client_tag, rate_key, session_key, user_key, user_tag
from service.infra.redis import RedisClient, Scripts
from service.rules.policies import CountedBy, Policy
from service.rules.rates import Rate


class GateStatus(IntEnum):
    ADMITTED = 0
    RATE_LIMITED = 1
    SESSION_ENDED = 2  # the token's session was ended (logout, revocation, expiry)
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
    def __init__(self, redis: RedisClient, scripts: Scripts) -> None:
        self._redis = redis
        self._scripts = scripts
        self._pipeline = AutoPipeline(redis)

    async def check_token(self, claims: TokenClaims) -> GateStatus:
        """Whether a verified token may still be used: not revoked, its user unchanged."""
        return (await self._run(claims=claims)).status

    async def count(
        self, policy: Policy, identity: str, rate: Rate, claims: TokenClaims | None
    ) -> GateDecision:
        """Count one request of `identity` against `policy` (checking `claims` first, when
        given, in the same round trip; a per-user policy then applies the user's own rate)."""
        return await self._run(
            claims=claims, key=_counter(policy, identity), rate=rate, per_user=policy.per_user
        )

    async def refund(self, policy: Policy, identity: str, rate: Rate) -> None:
        """Take back one counted request (a login that turned out to be no failure)."""
        interval_ms = rate.window * 1000 / rate.limit
        await self._scripts.gate_refund(keys=[_counter(policy, identity)], args=[interval_ms])

    async def forget(self, policy: Policy, identity: str) -> None:
        """Drop a counter, e.g. a deleted user's: whoever gets the name later starts afresh."""
        await self._redis.delete(_counter(policy, identity))

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
            keys += [user_key(claims.subject), session_key(claims.subject, claims.session)]
        if key is not None:
            keys.append(key)
        args = [
            "1" if claims is not None else "0",
            "1" if rate is not None else "0",
            claims.version if claims is not None else "",
            rate.limit if rate else 0,
            rate.window * 1000 if rate else 0,
            "1" if per_user else "0",
        ]
        reply = await self._pipeline.run(self._scripts.gate, keys, args)
        status, limit, window_ms, remaining, reset_ms = (int(value) for value in reply)
        return GateDecision(GateStatus(status), limit, window_ms, remaining, reset_ms)


_TAGS_BY_USER = frozenset({CountedBy.USER, CountedBy.USERNAME})


def _counter(policy: Policy, identity: str) -> str:
    """A policy's counter for one identity, in the slot of what it counts (see keys)."""
    tag = user_tag(identity) if policy.counted_by in _TAGS_BY_USER else client_tag(identity)
    return rate_key(policy.name, tag)
