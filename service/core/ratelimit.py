"""Rate limits shared by every worker and instance, decided atomically in Redis.

fastapi-limiter 0.2 supplies the FastAPI dependency (`RateLimiter`); we plug into its
extension points: an identifier per policy, a callback that answers 429 (or 401), and a
pyrate-limiter bucket factory whose buckets run `lua/gate.lua`. That one script also checks
the token's revocation and its user's state, so an authenticated, limited request costs one
Redis round trip in total.

Two library defaults are deliberately not used: the in-memory bucket (per process, and one
bucket for every key), and `Limiter.try_acquire_async`, which holds a per-event-loop
asyncio lock around each Redis call and so would serialise a worker's whole traffic.
"""

from __future__ import annotations

import logging
import math
import os
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import IntEnum
from inspect import isawaitable
from typing import Any

from fastapi import HTTPException, Request, Response, status
from fastapi_limiter.depends import RateLimiter
from pyrate_limiter import AbstractBucket, BucketFactory, Duration, Limiter, Rate, RateItem
from redis.exceptions import RedisError

from service.core.config import RateSpec
from service.core.errors import invalid_token
from service.core.metrics import RATE_LIMITED, count_redis_error
from service.core.redis import Scripts, rate_key, revoked_key, user_key
from service.core.security import TokenClaims

logger = logging.getLogger(__name__)


class GateStatus(IntEnum):
    ADMITTED = 0
    RATE_LIMITED = 1
    REVOKED = 2
    USER_STATE = 3


@dataclass(slots=True)
class GateDecision:
    status: GateStatus
    limit: int = 0
    window_ms: int = 0
    remaining: int = 0
    reset_ms: int = 0


@dataclass(slots=True)
class GateCall:
    """What one request asks of the gate, and what it answered."""

    policy: str
    header_name: str
    claims: TokenClaims | None
    decision: GateDecision | None = None


_current_call: ContextVar[GateCall] = ContextVar("gate_call")
_COUNTED = frozenset({GateStatus.ADMITTED, GateStatus.RATE_LIMITED})
# Key in the ASGI scope's state: the (RateLimit-Policy, RateLimit) items of every policy
# that counted this request.
RATELIMIT_STATE = "ratelimit_fields"


class RateLimited(HTTPException):
    def __init__(self, retry_after: int) -> None:
        super().__init__(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "Too many requests",
            {"Retry-After": str(retry_after)},
        )


def _seconds(decision: GateDecision) -> int:
    return max(1, math.ceil(decision.reset_ms / 1000))


def ratelimit_fields(policy_name: str, decision: GateDecision) -> tuple[str, str]:
    """One policy's items of the IETF httpapi ratelimit-headers draft fields:
    (`RateLimit-Policy`, `RateLimit`)."""
    return (
        f'"{policy_name}";q={decision.limit};w={decision.window_ms // 1000}',
        f'"{policy_name}";r={decision.remaining};t={_seconds(decision)}',
    )


def refuse_token(request: Request, gate_status: GateStatus) -> HTTPException:
    """The 401 for a token whose state the gate refused (revoked, or its user changed)."""
    revoked = gate_status is GateStatus.REVOKED
    request.state.auth_failure = "revoked" if revoked else "user"
    return invalid_token("token revoked" if revoked else None)


async def run_gate(
    scripts: Scripts,
    *,
    claims: TokenClaims | None,
    policy: str = "",
    identity: str = "",
    rate: RateSpec | None = None,
    user_override: bool = False,
) -> GateDecision:
    """One round trip: check the token's state and/or count one request against a policy."""
    keys: list[str] = []
    if claims is not None:
        keys += [user_key(claims.subject), revoked_key(claims.jti)]
    if rate is not None:
        keys.append(rate_key(policy, identity))
    args = [
        "1" if claims is not None else "0",
        "1" if rate is not None else "0",
        claims.version if claims is not None else "",
        rate.limit if rate else 0,
        rate.window * 1000 if rate else 0,
        os.urandom(8).hex(),
        "1" if user_override else "0",
    ]
    reply = await scripts.gate(keys=keys, args=args)
    return GateDecision(GateStatus(int(reply[0])), *(int(v) for v in reply[1:]))


class GateBucket(AbstractBucket):
    """A pyrate-limiter bucket for one key, backed by the gate script.

    One short-lived bucket per request keeps `failing_rate` from being shared between
    concurrent requests; the state itself lives in Redis and expires there, so there is
    nothing to leak locally.
    """

    is_async = True

    def __init__(self, factory: GateBucketFactory, identity: str) -> None:
        self.rates = [factory.pyrate_rate]
        self._factory = factory
        self._identity = identity

    async def put(self, item: RateItem) -> bool:
        call = _current_call.get()
        factory = self._factory
        try:
            decision = await run_gate(
                factory.scripts,
                claims=call.claims,
                policy=call.policy,
                identity=self._identity,
                rate=factory.rate,
                user_override=factory.user_override,
            )
        except RedisError as exc:
            if not (factory.fail_open and call.claims is None):
                raise
            count_redis_error(exc)
            logger.warning("rate limiter failing open for policy %s: Redis error", call.policy)
            return True
        call.decision = decision
        self.failing_rate = None if decision.status is GateStatus.ADMITTED else self.rates[0]
        return decision.status is GateStatus.ADMITTED

    def leak(self, current_timestamp: int | None = None) -> int:
        return 0

    def flush(self) -> None:
        return None

    def count(self) -> int:
        return 0

    def peek(self, index: int) -> RateItem | None:
        return None


@dataclass(eq=False)
class GateBucketFactory(BucketFactory):
    """Routes each key to its own bucket: keys never add up."""

    scripts: Scripts
    rate: RateSpec
    user_override: bool = False
    fail_open: bool = False
    pyrate_rate: Rate = field(init=False)

    def __post_init__(self) -> None:
        self.pyrate_rate = Rate(self.rate.limit, Duration.SECOND * self.rate.window)

    def wrap_item(self, name: str, weight: int = 1) -> RateItem:
        return RateItem(name, 0, weight=weight)

    def get(self, item: RateItem) -> AbstractBucket:
        # fastapi-limiter appends ":<route index>:<dependency index>" to the identifier;
        # the policy, not the route, names the counter, so routes of a policy share a quota.
        identity = item.name.rsplit(":", 2)[0]
        return GateBucket(self, identity)


class LockFreeLimiter(Limiter):
    """pyrate-limiter's Limiter without the per-loop asyncio lock (see module docstring)."""

    async def try_acquire_async(
        self,
        name: str = "pyrate",
        weight: int = 1,
        blocking: bool = False,
        timeout: float = -1,  # noqa: ASYNC109 - the overridden signature; never blocks
    ) -> bool:
        result: Any = self.try_acquire(name, weight, blocking=False)
        if isawaitable(result):
            result = await result
        return bool(result)


async def _reject(request: Request, response: Response) -> None:
    """fastapi-limiter's callback: 429 with Retry-After, or 401 when the token was refused."""
    call = _current_call.get()
    decision = call.decision
    if decision is None:  # only a failed-open call has no decision, and it was admitted
        return
    if decision.status is GateStatus.RATE_LIMITED:
        RATE_LIMITED.labels(call.policy).inc()
        raise RateLimited(_seconds(decision))
    raise refuse_token(request, decision.status)


class PolicyLimiter(RateLimiter):
    """fastapi-limiter's dependency for one policy. Each counted request records its
    RateLimit fields in the request state; the middleware puts them on whatever response
    goes out (200, 429, or a 401/422 raised after the request was counted)."""

    def __init__(
        self,
        name: str,
        header_name: str,
        factory: GateBucketFactory,
        identifier: Any,
        checks_token: bool = False,
    ) -> None:
        super().__init__(limiter=LockFreeLimiter(factory), identifier=identifier, callback=_reject)
        self.name = name
        self.header_name = header_name
        self.checks_token = checks_token

    async def __call__(self, request: Request, response: Response) -> None:
        claims = getattr(request.state, "claims", None) if self.checks_token else None
        call = GateCall(self.name, self.header_name, claims)
        token = _current_call.set(call)
        try:
            await super().__call__(request, response)
        finally:
            _current_call.reset(token)
            decision = call.decision
            if decision is not None and decision.status in _COUNTED:
                fields = ratelimit_fields(self.header_name, decision)
                request.scope.setdefault("state", {}).setdefault(RATELIMIT_STATE, []).append(fields)
