"""What one worker holds for its lifetime, built from the settings in one place.

The app lifespan opens a `Runtime` after gunicorn forks (so Redis sockets are never shared
between processes) and closes it at shutdown; the admin CLI opens one without the model. The
model itself is loaded once, before the fork (see `create_app`), and shared by the workers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.exceptions import RedisError

from service.auth.passwords import PasswordHasher
from service.auth.sessions import SessionStore
from service.auth.tokens import TokenService
from service.auth.users import UserStore
from service.infra.config import Settings
from service.infra.metrics import REDIS_MEMORY_RATIO, count_redis_error
from service.infra.redis import (
    RedisClient,
    Replication,
    Scripts,
    close_redis,
    create_redis,
    memory_ratio,
)
from service.limits.gate import Gate
from service.limits.limiter import Limits
from service.ml.coalescing import CoalescedInference
from service.ml.predictor import Predictor
from service.rules.accounts import normalize_username
from service.rules.policies import POLICIES, PREDICT
from service.rules.scopes import Scope

logger = logging.getLogger(__name__)

STORAGE_RETRY_FIRST_SECONDS = 0.5
STORAGE_RETRY_MAX_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    redis: RedisClient
    tokens: TokenService
    users: UserStore
    sessions: SessionStore
    gate: Gate
    limits: Limits
    _inference: CoalescedInference | None

    @classmethod
    def open(cls, settings: Settings, predictor: Predictor | None = None) -> Runtime:
        """Build everything around an already loaded model (None for admin commands)."""
        redis = create_redis(settings)
        scripts = Scripts.register(redis)
        gate = Gate(redis, scripts)
        tokens = TokenService(settings)
        replication = Replication(
            redis, settings.revocation_replicas, settings.redis_revocation_wait_ms
        )
        sessions = SessionStore(
            redis,
            scripts,
            tokens,
            replication=replication,
            max_per_user=settings.max_sessions_per_user,
            max_age_seconds=settings.session_max_age_seconds,
        )
        return cls(
            settings=settings,
            redis=redis,
            tokens=tokens,
            users=UserStore(redis, scripts, PasswordHasher(settings), sessions, replication),
            sessions=sessions,
            gate=gate,
            limits=Limits(
                gate,
                {policy: settings.rate(policy) for policy in POLICIES},
                fail_open=settings.rate_limit_fail_open,
            ),
            _inference=(
                None
                if predictor is None
                else CoalescedInference(predictor, settings.inline_inference_rows)
            ),
        )

    async def close(self) -> None:
        await close_redis(self.redis)

    @property
    def predictor(self) -> Predictor:
        return self.inference.predictor

    @property
    def inference(self) -> CoalescedInference:
        """The model, predicting on the event loop with this loop turn's other calls."""
        if self._inference is None:
            raise RuntimeError("this runtime was opened without the model")
        return self._inference

    async def prepare_storage(self) -> bool:
        """Bring data written by earlier releases up to date, then ensure the admin; False
        when Redis does not answer (see `keep_preparing_storage`)."""
        try:
            await self.users.adopt_legacy_records()
            await self.ensure_admin()
        except RedisError as exc:
            count_redis_error(exc)
            logger.warning("storage not ready at start (%s): retrying", type(exc).__name__)
            return False
        return True

    async def keep_preparing_storage(self) -> None:
        """Retry `prepare_storage` until it succeeds: a worker that starts while Redis is
        down serves (503 where Redis is needed, readiness failing) and catches up."""
        delay = STORAGE_RETRY_FIRST_SECONDS
        while not await self.prepare_storage():
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORAGE_RETRY_MAX_SECONDS)

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

    async def delete_user(self, username: str, *, actor: str | None = None) -> bool:
        """Delete a user, its sessions and its quota, so whoever gets the name later starts
        afresh. Raises AdminChangeRefused (see UserStore)."""
        if not await self.users.delete(username, actor=actor):
            return False
        await self.gate.forget(PREDICT, username)
        return True

    async def storage_memory(self) -> float | None:
        """Redis's used memory as a fraction of its `maxmemory` (0 when it has none), or
        None when Redis does not answer within the socket timeout. A full Redis refuses
        writes (logins, refreshes), so readiness reports the pressure before that."""
        try:
            ratio = await asyncio.wait_for(
                memory_ratio(self.redis), timeout=self.settings.redis_socket_timeout
            )
        except (RedisError, OSError, TimeoutError) as exc:
            count_redis_error(exc)
            return None
        REDIS_MEMORY_RATIO.set(ratio)
        return ratio
