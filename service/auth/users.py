"""Users in Redis: one hash per user, shared by every worker of every instance.

`token_version` is a random value copied into every token the user gets. Changing it
(revoke-tokens, password or scope change, refresh-token reuse) kills all of the user's
tokens at once; a deleted and re-created user gets a new one, so old tokens stay dead.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from service.auth.passwords import PasswordHasher
from service.infra.keys import USERS_SET, user_key
from service.infra.redis import Scripts
from service.rules.accounts import normalize_username
from service.rules.rates import Rate
from service.rules.scopes import Scope


def new_token_version() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password_hash: str
    scopes: frozenset[Scope]
    disabled: bool
    created_at: float
    token_version: str
    rate_limit: str | None

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

    def __init__(self, redis: Redis, scripts: Scripts, hasher: PasswordHasher) -> None:
        self._redis = redis
        self._scripts = scripts
        self._hasher = hasher

    async def authenticate(self, username: str, password: str) -> User | None:
        """The enabled user these credentials belong to, or None. Costs one Argon2 check
        whether or not the user exists, so timing does not tell which part was wrong."""
        try:
            name: str | None = normalize_username(username)
        except ValueError:
            name = None
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
        args = [username, *(item for pair in fields.items() for item in pair)]
        created = await self._scripts.create_user(keys=[user_key(username), USERS_SET], args=args)
        return bool(created)

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
        disabled: bool | None = None,
        password: str | None = None,
        scopes: frozenset[Scope] | None = None,
        rate_limit: Rate | None = None,
        clear_rate_limit: bool = False,
    ) -> bool:
        """Apply the given changes. Disabling, a new password or new scopes revoke the user's
        tokens, so re-enabling a user never revives a session from before."""
        fields: dict[str, str] = {}
        removed: list[str] = []
        if disabled is not None:
            fields["disabled"] = "1" if disabled else "0"
        if password is not None:
            fields["hash"] = await self._hasher.hash(password)
        if scopes is not None:
            fields["scopes"] = " ".join(sorted(scopes))
        if disabled or password is not None or scopes is not None:
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
        updated = await self._scripts.update_user(keys=[user_key(username)], args=args)
        return bool(updated)

    async def store_rehash(self, user: User, new_hash: str) -> None:
        """Store a rehash after login (same password, newer parameters): tokens stay valid.
        Skipped if the password changed while this login was verifying the old one."""
        await self._scripts.rehash(
            keys=[user_key(user.username)], args=[user.password_hash, new_hash]
        )

    async def revoke_tokens(self, username: str) -> bool:
        args: list[str | int] = [0, "token_version", new_token_version()]
        return bool(await self._scripts.update_user(keys=[user_key(username)], args=args))

    async def delete(self, username: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(user_key(username))
            pipe.srem(USERS_SET, username)
            deleted, _ = await pipe.execute()
        return bool(deleted)
