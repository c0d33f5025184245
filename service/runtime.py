"""What one worker holds for its lifetime, built from the settings in one place.

The app lifespan opens a `Runtime` after gunicorn forks (so Redis sockets are never shared
between processes) and closes it at shutdown; the admin CLI opens one without the model.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.auth.passwords import PasswordHasher
from service.auth.revocation import Revocations
from service.auth.tokens import TokenService
from service.auth.users import UserStore
from service.infra.config import Settings
from service.infra.metrics import count_redis_error
from service.infra.redis import Scripts, create_redis
from service.limits.gate import Gate
from service.limits.limiter import Limits
from service.ml.artifact import load_model
from service.ml.predictor import Predictor
from service.rules.accounts import normalize_username
from service.rules.policies import POLICIES, PREDICT
from service.rules.scopes import Scope

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    redis: Redis
    tokens: TokenService
    users: UserStore
    revocations: Revocations
    gate: Gate
    limits: Limits
    _predictor: Predictor | None

    @classmethod
    def open(cls, settings: Settings, *, with_model: bool = True) -> Runtime:
        """Build everything; `with_model=False` skips loading the model (admin commands)."""
        predictor = load_model(settings.model_dir) if with_model else None
        redis = create_redis(settings)
        scripts = Scripts.register(redis)
        gate = Gate(redis, scripts)
        return cls(
            settings=settings,
            redis=redis,
            tokens=TokenService(settings),
            users=UserStore(redis, scripts, PasswordHasher(settings)),
            revocations=Revocations(redis, scripts),
            gate=gate,
            limits=Limits(
                gate,
                {policy: settings.rate(policy) for policy in POLICIES},
                fail_open=settings.rate_limit_fail_open,
            ),
            _predictor=predictor,
        )

    async def close(self) -> None:
        await self.redis.aclose()

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            raise RuntimeError("this runtime was opened without the model")
        return self._predictor

    async def ensure_admin(self) -> None:
        """Create the bootstrap admin (ADMIN_USERNAME) if absent; never overwrite it."""
        settings = self.settings
        if not settings.admin_username or settings.admin_password is None:
            return
        username = normalize_username(settings.admin_username)
        if await self.users.get(username) is not None:
            return
        password = settings.admin_password.get_secret_value()
        if await self.users.create(username, password, frozenset({Scope.ADMIN, Scope.PREDICT})):
            logger.info("created admin user %r", username)

    async def delete_user(self, username: str) -> bool:
        """Delete a user and its quota, so whoever gets the name later starts afresh."""
        if not await self.users.delete(username):
            return False
        await self.gate.forget(PREDICT, username)
        return True

    async def storage_ready(self) -> bool:
        """Whether Redis answers within the socket timeout."""
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=self.settings.redis_socket_timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            count_redis_error(exc)
            return False
        return True
