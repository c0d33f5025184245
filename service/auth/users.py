"""Users in Redis: one hash per user, shared by every worker of every instance.

`token_version` is a random value copied into every token the user gets. Changing it
(revoke-tokens, password or scope change, disabling) kills all of the user's tokens at
once, and the user's sessions are ended too; a deleted and re-created user gets a new one,
so old tokens stay dead.

Admins: no change may leave the service without an enabled admin, and no admin may demote,
disable or delete itself. Such changes are checked and made under a short Redis lock, so two
admins demoting each other at once cannot both succeed.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from redis.commands.core import AsyncScript
from redis.exceptions import LockError

from service.auth.passwords import PasswordHasher
from service.auth.sessions import SessionStore
from service.infra.keys import ADMIN_CHANGE_LOCK, USERS_SET, legacy_user_key, user_key
from service.infra.redis import RedisClient, Replication, Scripts
from service.rules.accounts import MAX_PASSWORD_LENGTH, normalize_username
from service.rules.rates import Rate
from service.rules.scopes import Scope

logger = logging.getLogger(__name__)

ADMIN_LOCK_SECONDS = 5.0
ADMIN_LOCK_WAIT_SECONDS = 2.0


async def _direct(script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
    return await script(keys=keys, args=args)


def new_token_version() -> str:
    return secrets.token_hex(8)


class AdminChangeRefused(Exception):
    """The change would leave no enabled admin, or an admin would demote itself."""


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password_hash: str
    scopes: frozenset[Scope]
    disabled: bool
    created_at: float
    token_version: str
    rate_limit: str | None

    @property
    def is_enabled_admin(self) -> bool:
        return Scope.ADMIN in self.scopes and not self.disabled

    @classmethod
    def from_hash(cls, username: str, fields: dict[str, str]) -> User:
        return cls(
            username=username,
            password_hash=fields["hash"],
            scopes=frozenset(Scope(name) for name in fields.get("scopes", "").split()),
            disabled=fields.get("disabled") == "1",
            created_at=float(fields.get("created_at", "0")),
            token_version=fields["token_version"],
            rate_limit=fields.get("rate_limit") or None,
        )


class UserStore:
    """CRUD on users; every write that must not race is a Lua script."""

    def __init__(
        self,
        redis: RedisClient,
        scripts: Scripts,
        hasher: PasswordHasher,
        sessions: SessionStore,
        replication: Replication,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._replication = replication
        self._hasher = hasher
        self._sessions = sessions

    async def authenticate(self, username: str, password: str) -> User | None:
        """The enabled user these credentials belong to, or None. Costs one Argon2 check
        whether or not the user exists, so timing does not tell which part was wrong."""
        try:
            name: str | None = normalize_username(username)
        except ValueError:
            name = None
        if len(password) > MAX_PASSWORD_LENGTH:
            # No account has such a password: check an empty one instead, at the same cost,
            # rather than hash kilobytes (or trip the hasher's own size limit).
            password = ""
        user = await self.get(name) if name else None
        valid, new_hash = await self._hasher.verify(password, user.password_hash if user else None)
        if user is None or not valid or user.disabled:
            return None
        if new_hash is not None:
            await self.store_rehash(user, new_hash)
        return user

    async def get(self, username: str) -> User | None:
        # decode_responses=True: Redis answers str, which redis-py's stubs cannot know.
        fields = cast(dict[str, str], await self._redis.hgetall(user_key(username)))
        if not fields or "hash" not in fields:
            return None
        return User.from_hash(username, fields)

    async def create(self, username: str, password: str, scopes: frozenset[Scope]) -> bool:
        """Create the user unless it exists; returns whether it was created."""
        password_hash = await self._hasher.hash(password)
        fields = {
            "hash": password_hash,
            "scopes": " ".join(sorted(scopes)),
            "disabled": "0",
            "created_at": f"{time.time():.3f}",
            "token_version": new_token_version(),
        }
        # The name goes into the set first: listing skips a name without a record, never
        # misses a record.
        await self._redis.sadd(USERS_SET, username)
        args = [item for pair in fields.items() for item in pair]
        return bool(await self._scripts.create_user(keys=[user_key(username)], args=args))

    async def list(self) -> list[User]:
        names = sorted(cast(set[str], await self._redis.smembers(USERS_SET)))
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(user_key(name))
            rows = cast(list[dict[str, str]], await pipe.execute())
        return [User.from_hash(n, f) for n, f in zip(names, rows, strict=True) if f.get("hash")]

    async def update(
        self,
        username: str,
        *,
        actor: str | None = None,
        disabled: bool | None = None,
        password: str | None = None,
        scopes: frozenset[Scope] | None = None,
        rate_limit: Rate | None = None,
        clear_rate_limit: bool = False,
    ) -> bool:
        """Apply the given changes (`actor`: the admin making them, if any). Disabling, a new
        password or new scopes revoke the user's tokens and end its sessions, so re-enabling
        a user never revives a session from before. Raises AdminChangeRefused."""
        fields: dict[str, str] = {}
        removed: list[str] = []
        if disabled is not None:
            fields["disabled"] = "1" if disabled else "0"
        if password is not None:
            fields["hash"] = await self._hasher.hash(password)
        if scopes is not None:
            fields["scopes"] = " ".join(sorted(scopes))
        revokes = bool(disabled) or password is not None or scopes is not None
        if revokes:
            fields["token_version"] = new_token_version()
        if rate_limit is not None:
            fields |= {
                "rate_limit": str(rate_limit),
                "rl_limit": str(rate_limit.limit),
                "rl_window_ms": str(rate_limit.window * 1000),
            }
        elif clear_rate_limit:
            removed = ["rate_limit", "rl_limit", "rl_window_ms"]
        pairs = [item for pair in fields.items() for item in pair]
        args: list[str | int] = [len(removed), *removed, *pairs]
        demotes = bool(disabled) or (scopes is not None and Scope.ADMIN not in scopes)
        # Revoking changes wait for the replicas (see Replication); others need not.
        run = self._replication.run if revokes else _direct
        async with self._admin_guard(username, actor, demotes):
            updated = bool(await run(self._scripts.update_user, [user_key(username)], args))
        if updated and revokes:
            await self._sessions.end_all(username)
        return updated

    async def store_rehash(self, user: User, new_hash: str) -> None:
        """Store a rehash after login (same password, newer parameters): tokens stay valid.
        Skipped if the password changed while this login was verifying the old one."""
        await self._scripts.rehash(
            keys=[user_key(user.username)], args=[user.password_hash, new_hash]
        )

    async def revoke_tokens(self, username: str) -> bool:
        """Refuse every token issued to the user so far, and end its sessions."""
        args: list[str | int] = [0, "token_version", new_token_version()]
        revoked = bool(
            await self._replication.run(self._scripts.update_user, [user_key(username)], args)
        )
        if revoked:
            await self._sessions.end_all(username)
        return revoked

    async def delete(self, username: str, *, actor: str | None = None) -> bool:
        """Delete the user and end its sessions. Raises AdminChangeRefused."""
        async with self._admin_guard(username, actor, demotes=True):
            deleted = bool(
                await self._replication.run(self._scripts.delete_user, [user_key(username)], [])
            )
        await self._redis.srem(USERS_SET, username)
        if deleted:
            await self._sessions.end_all(username)
        return deleted

    @asynccontextmanager
    async def _admin_guard(
        self, username: str, actor: str | None, demotes: bool
    ) -> AsyncIterator[None]:
        """Hold the admin-change lock while a change that could take an enabled admin away
        is checked and made; other changes pass straight through."""
        target = await self.get(username) if demotes else None
        if target is None or not target.is_enabled_admin:
            yield
            return
        if actor == username:
            raise AdminChangeRefused("an admin cannot demote, disable or delete itself")
        lock = self._redis.lock(
            ADMIN_CHANGE_LOCK, timeout=ADMIN_LOCK_SECONDS, blocking_timeout=ADMIN_LOCK_WAIT_SECONDS
        )
        if not await lock.acquire():
            raise AdminChangeRefused("another admin change is in progress: try again")
        try:
            admins = {user.username for user in await self.list() if user.is_enabled_admin}
            if not admins - {username}:
                raise AdminChangeRefused("this is the last enabled admin")
            yield
        finally:
            try:
                await lock.release()
            except LockError:  # expired meanwhile: nothing of ours left to release
                logger.warning("admin-change lock expired before release")

    async def adopt_legacy_records(self) -> int:
        """Move users stored by releases before sessions (`sma:user:<name>`) to their current
        key. Idempotent and safe when several instances start at once."""
        moved = 0
        for name in sorted(cast(set[str], await self._redis.smembers(USERS_SET))):
            legacy = cast(dict[str, str], await self._redis.hgetall(legacy_user_key(name)))
            if not legacy:
                continue
            if not await self._redis.exists(user_key(name)):
                await self._redis.hset(
                    user_key(name), items=[x for kv in legacy.items() for x in kv]
                )
                moved += 1
            await self._redis.delete(legacy_user_key(name))
        if moved:
            logger.info("moved %d user(s) to the current key layout", moved)
        return moved
