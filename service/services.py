"""What one worker holds for its lifetime: built in the app lifespan (after gunicorn forks),
closed at shutdown."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fastapi import Request
from redis.asyncio import Redis

from service.core.config import RateSpec, Settings
from service.core.ratelimit import GateBucketFactory, PolicyLimiter
from service.core.redis import Scripts
from service.core.security import TokenService
from service.core.users import UserStore, normalize_username
from service.ml.inference import Predictor

# The contract's name for the per-user prediction policy in the RateLimit headers.
PREDICT_POLICY_HEADER = "default"


def client_ip(request: Request) -> str:
    """The peer address, already rewritten from X-Forwarded-For by the ASGI server only when
    the direct peer is a trusted proxy (gunicorn/uvicorn `forwarded_allow_ips`)."""
    return request.client.host if request.client else "unknown"


async def ip_identifier(request: Request) -> str:
    return client_ip(request)


async def user_identifier(request: Request) -> str:
    subject: str = request.state.claims.subject
    return subject


async def login_identifier(request: Request) -> str:
    form = await request.form()
    raw = form.get("username")
    name = raw if isinstance(raw, str) else ""
    try:
        name = normalize_username(name)
    except ValueError:
        # Not a valid username, but still a distinct target: bound the key's size.
        name = "~" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{client_ip(request)}|{name}"


@dataclass(frozen=True, slots=True)
class Limits:
    predict: PolicyLimiter
    login: PolicyLimiter
    login_ip: PolicyLimiter
    public: PolicyLimiter

    @classmethod
    def build(cls, settings: Settings, scripts: Scripts) -> Limits:
        def factory(rate: RateSpec, *, user_override: bool = False) -> GateBucketFactory:
            return GateBucketFactory(
                scripts,
                rate,
                user_override=user_override,
                fail_open=settings.rate_limit_fail_open,
            )

        return cls(
            predict=PolicyLimiter(
                "predict",
                PREDICT_POLICY_HEADER,
                factory(settings.predict_rate, user_override=True),
                user_identifier,
                checks_token=True,
            ),
            login=PolicyLimiter("login", "login", factory(settings.login_rate), login_identifier),
            login_ip=PolicyLimiter(
                "login-ip", "login-ip", factory(settings.login_ip_rate), ip_identifier
            ),
            public=PolicyLimiter("public", "public", factory(settings.public_rate), ip_identifier),
        )


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    redis: Redis
    scripts: Scripts
    tokens: TokenService
    users: UserStore
    limits: Limits
    predictor: Predictor

    async def aclose(self) -> None:
        await self.redis.aclose()
