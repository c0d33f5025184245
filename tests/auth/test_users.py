"""The users store: races that the HTTP tests cannot time."""

from __future__ import annotations

from fastapi import FastAPI
from redis.asyncio import Redis

from service.auth.users import UserStore
from service.infra.config import Settings
from service.infra.keys import legacy_user_key, user_key
from service.main import create_app
from service.rules.scopes import Scope


async def test_a_login_rehash_never_overwrites_a_newer_password(app: FastAPI) -> None:
    store: UserStore = app.state.runtime.users
    assert await store.create("rita", "old-password-123", frozenset({Scope.PREDICT}))
    seen_at_login = await store.get("rita")
    assert seen_at_login is not None
    await store.update("rita", password="new-password-456")  # lands while Argon2 runs
    await store.store_rehash(seen_at_login, "$argon2id$rehash-of-the-old-password")
    now = await store.get("rita")
    assert now is not None
    assert now.password_hash != "$argon2id$rehash-of-the-old-password"
    assert await store.authenticate("rita", "new-password-456") is not None


async def test_a_login_rehash_is_stored_when_nothing_changed(app: FastAPI) -> None:
    store: UserStore = app.state.runtime.users
    assert await store.create("sam", "old-password-123", frozenset())
    user = await store.get("sam")
    assert user is not None
    await store.store_rehash(user, "$argon2id$rehashed")
    stored = await store.get("sam")
    assert stored is not None
    assert stored.password_hash == "$argon2id$rehashed"


async def test_users_of_earlier_releases_move_to_the_current_keys(
    settings: Settings, redis: Redis
) -> None:
    """Upgrading keeps every account: records under the pre-session key are moved at start."""
    first = create_app(settings)
    async with first.router.lifespan_context(first):
        store: UserStore = first.state.runtime.users
        assert await store.create("olga", "olgas-password-123", frozenset({Scope.PREDICT}))
    record = await redis.hgetall(user_key("olga"))
    await redis.delete(user_key("olga"))
    await redis.hset(legacy_user_key("olga"), items=[x for kv in record.items() for x in kv])
    upgraded = create_app(settings)
    async with upgraded.router.lifespan_context(upgraded):
        store = upgraded.state.runtime.users
        assert await store.authenticate("olga", "olgas-password-123") is not None
    assert not await redis.exists(legacy_user_key("olga"))
    assert await redis.hgetall(user_key("olga")) == record
