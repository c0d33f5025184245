"""fastapi-limiter, wired to the gate: the FastAPI dependency of each rate-limit policy.

fastapi-limiter 0.2 supplies the dependency (`RateLimiter`); we plug into its extension
points: an identifier per policy, a callback that answers 429 (or 401), and a pyrate-limiter
bucket factory whose buckets run the gate. The gate also checks the token of a per-user
policy, so an authenticated, limited request costs one Redis round trip in total.

Two library defaults are deliberately not used: the in-memory bucket (per process, and one
bucket for every key), and `Limiter.try_acquire_async`, which holds a per-event-loop
asyncio lock around each Redis call and so would serialise a worker's whole traffic.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from fastapi import HTTPException, Request, Response, status
from fastapi_limiter.depends import RateLimiter
from pyrate_limiter import (
    AbstractBucket,
    BucketFactory,
    Duration,
    Limiter,
    RateItem,
    validate_rate_list,
)
from pyrate_limiter import Rate as PyrateRate
from redis.exceptions import RedisError

from service.auth.tokens import TokenClaims
from service.infra.context import request_context
from service.infra.errors import invalid_token
from service.infra.metrics import RATE_LIMITED, count_redis_error
from service.limits.gate import Gate, GateDecision, GateStatus
from service.rules.accounts import normalize_username
from service.rules.policies import CountedBy, Policy
from service.rules.rates import Rate

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Call:
    """One policy's count for the request being served: fastapi-limiter hands its bucket
    only a key string, so the token to check and the decision travel here."""

    claims: TokenClaims | None
    identity: str = ""
    decision: GateDecision | None = None


_current_call: ContextVar[_Call] = ContextVar("gate_call")


class RateLimited(HTTPException):
    def __init__(self, retry_after: int) -> None:
        super().__init__(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "Too many requests",
            {"Retry-After": str(retry_after)},
        )


def _seconds(decision: GateDecision) -> int:
    return max(1, math.ceil(decision.reset_ms / 1000))


def ratelimit_fields(header_name: str, decision: GateDecision) -> tuple[str, str]:
    """One policy's items of the IETF httpapi ratelimit-headers draft fields:
    (`RateLimit-Policy`, `RateLimit`)."""
    return (
        f'"{header_name}";q={decision.limit};w={decision.window_ms // 1000}',
        f'"{header_name}";r={decision.remaining};t={_seconds(decision)}',
    )


def refuse_token(gate_status: GateStatus) -> HTTPException:
    """The 401 for a token whose state the gate refused (session ended, or user changed)."""
    ended = gate_status is GateStatus.SESSION_ENDED
    request_context().auth_failure = "session_ended" if ended else "user"
    return invalid_token("session ended" if ended else None)


def client_ip(request: Request) -> str:
    """The peer address, already rewritten from X-Forwarded-For by the ASGI server only when
    the direct peer is a trusted proxy (gunicorn/uvicorn `forwarded_allow_ips`)."""
    return request.client.host if request.client else "unknown"


def client_identity(request: Request) -> str:
    """What a per-client limit counts: the address, or an IPv6 client's /64 (one host
    usually holds a whole /64, so counting single addresses would be no limit at all)."""
    host = client_ip(request)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return host


async def _submitted_username(request: Request) -> str:
    """The username a login form tries, normalized; a stand-in of bounded size when it is
    not a valid username (still a distinct target)."""
    form = await request.form()
    raw = form.get("username")
    name = raw if isinstance(raw, str) else ""
    try:
        return normalize_username(name)
    except ValueError:
        return "~" + hashlib.sha256(name.encode()).hexdigest()[:16]


async def _by_user(request: Request) -> str:
    claims = _current_call.get().claims
    return claims.subject if claims is not None else "anonymous"


async def _by_username(request: Request) -> str:
    return await _submitted_username(request)


async def _by_client(request: Request) -> str:
    return client_identity(request)


async def _by_client_and_username(request: Request) -> str:
    return f"{client_identity(request)}|{await _submitted_username(request)}"


_IDENTIFIERS: dict[CountedBy, Callable[[Request], Awaitable[str]]] = {
    CountedBy.USER: _by_user,
    CountedBy.USERNAME: _by_username,
    CountedBy.CLIENT: _by_client,
    CountedBy.CLIENT_AND_USERNAME: _by_client_and_username,
}


class GateBucket(AbstractBucket):
    """A pyrate-limiter bucket for one key, backed by the gate.

    One short-lived bucket per request keeps `failing_rate` from being shared between
    concurrent requests; the state itself lives in Redis and expires there, so there is
    nothing to leak locally.
    """

    is_async = True

    def __init__(self, factory: GateBucketFactory, identity: str) -> None:
        self._factory = factory
        self._identity = identity

    @property
    def rates(self) -> list[PyrateRate]:
        """The policy's rate, its list checked once by the factory: the base class's setter
        sorts and validates the list on each assignment, i.e. on every request here."""
        return self._factory.pyrate_rates

    @rates.setter
    def rates(self, value: list[PyrateRate]) -> None:
        raise AttributeError("a gate bucket's rate is its policy's (GateBucketFactory.rate)")

    async def put(self, item: RateItem) -> bool:
        call = _current_call.get()
        factory = self._factory
        try:
            decision = await factory.gate.count(
                factory.policy, self._identity, factory.rate, call.claims
            )
        except RedisError as exc:
            if not (factory.fail_open and call.claims is None):
                raise
            count_redis_error(exc)
            logger.warning(
                "rate limiter failing open for policy %s: Redis error", factory.policy.name
            )
            return True
        call.identity = self._identity
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

    gate: Gate
    policy: Policy
    rate: Rate
    fail_open: bool = False
    pyrate_rates: list[PyrateRate] = field(init=False)

    def __post_init__(self) -> None:
        self.pyrate_rates = [PyrateRate(self.rate.limit, Duration.SECOND * self.rate.window)]
        validate_rate_list(self.pyrate_rates)

    def wrap_item(self, name: str, weight: int = 1) -> RateItem:
        return RateItem(name, 0, weight=weight)

    def get(self, item: RateItem) -> GateBucket:
        # fastapi-limiter appends ":<route index>:<dependency index>" to the identifier;
        # the policy, not the route, names the counter, so routes of a policy share a quota.
        identity = item.name.rsplit(":", 2)[0]
        return GateBucket(self, identity)


class LockFreeLimiter(Limiter):
    """pyrate-limiter's Limiter for a non-blocking async bucket, without the per-loop asyncio
    lock (see module docstring).

    An acquire is what `Limiter.try_acquire` does for such a bucket: wrap the item, route it
    to its key's bucket, put it. The rest of that method (its thread lock, deadlines, the
    delay loop that blocking waits use) never applies here, and cost about 25 µs of a
    worker's CPU per request in the profile of `POST /predict`.
    """

    def __init__(self, buckets: GateBucketFactory) -> None:
        super().__init__(buckets)
        self._buckets = buckets

    async def try_acquire_async(
        self,
        name: str = "pyrate",
        weight: int = 1,
        blocking: bool = False,
        timeout: float = -1,  # noqa: ASYNC109 - the overridden signature; never blocks
    ) -> bool:
        if blocking:
            raise ValueError("a gate bucket never blocks: it answers at once")
        item = self._buckets.wrap_item(name, weight)
        return await self._buckets.get(item).put(item)


async def _reject(request: Request, response: Response) -> None:
    """fastapi-limiter's callback: 429 with Retry-After, or 401 when the token was refused."""
    decision = _current_call.get().decision
    if decision is None:  # only a failed-open call has no decision, and it was admitted
        return
    if decision.status is GateStatus.RATE_LIMITED:
        raise RateLimited(_seconds(decision))
    raise refuse_token(decision.status)


class PolicyLimiter(RateLimiter):
    """fastapi-limiter's dependency for one policy. Each counted request records its
    RateLimit fields in the request context; the middleware puts them on whatever response
    goes out (200, 429, or a 401/422 raised after the request was counted)."""

    def __init__(self, policy: Policy, gate: Gate, rate: Rate, *, fail_open: bool) -> None:
        factory = GateBucketFactory(gate, policy, rate, fail_open=fail_open)
        super().__init__(
            limiter=LockFreeLimiter(factory),
            identifier=_IDENTIFIERS[policy.counted_by],
            callback=_reject,
        )
        self.policy = policy

    async def __call__(
        self, request: Request, response: Response, claims: TokenClaims | None = None
    ) -> None:
        """Count the request; with `claims`, check that token in the same round trip."""
        call = _Call(claims)
        token = _current_call.set(call)
        try:
            await super().__call__(request, response)
        finally:
            _current_call.reset(token)
            decision = call.decision
            if decision is not None and decision.counted:
                if decision.status is GateStatus.RATE_LIMITED:
                    RATE_LIMITED.labels(self.policy.name).inc()
                context = request_context()
                context.ratelimit_fields.append(ratelimit_fields(self.policy.header, decision))
                context.counted[self.policy.name] = call.identity


class Limits:
    """The dependency of every policy, at the rates the settings give."""

    def __init__(self, gate: Gate, rates: dict[Policy, Rate], *, fail_open: bool) -> None:
        self._gate = gate
        self._rates = rates
        self._limiters = {
            policy: PolicyLimiter(policy, gate, rate, fail_open=fail_open)
            for policy, rate in rates.items()
        }

    def __getitem__(self, policy: Policy) -> PolicyLimiter:
        return self._limiters[policy]

    async def refund(self, policy: Policy) -> None:
        """Take back this request's count under a failures-only `policy` (it succeeded)."""
        identity = request_context().counted.pop(policy.name, None)
        if identity is not None:
            await self._gate.refund(policy, identity, self._rates[policy])
