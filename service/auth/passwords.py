"""Password hashing: Argon2id through libpass (imported as `passlib`), off the event loop,
with a bound on how many hashes run at once (each one takes tens of MiB)."""

from __future__ import annotations

import secrets

import anyio
from passlib.context import CryptContext

from service.infra.config import Settings


class PasswordHasher:
    """Argon2id hashing; unknown users are verified against a dummy hash so that a wrong
    username costs the same time as a wrong password."""

    def __init__(self, settings: Settings) -> None:
        self._context = CryptContext(
            schemes=["argon2"],
            argon2__time_cost=settings.argon2_time_cost,
            argon2__memory_cost=settings.argon2_memory_cost_kib,
            argon2__parallelism=settings.argon2_parallelism,
        )
        self._limiter = anyio.CapacityLimiter(settings.password_hash_concurrency)
        self._dummy_hash = self._context.hash(secrets.token_urlsafe(24))

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._context.hash, password, limiter=self._limiter)

    async def verify(self, password: str, stored_hash: str | None) -> tuple[bool, str | None]:
        """Return (valid, new_hash); new_hash is set when the stored hash used older parameters."""
        target = stored_hash or self._dummy_hash
        try:
            valid, new_hash = await anyio.to_thread.run_sync(
                self._context.verify_and_update, password, target, limiter=self._limiter
            )
        except ValueError:  # passlib refuses the input (e.g. too long): not a match
            return False, None
        if stored_hash is None:
            return False, None
        return bool(valid), new_hash
