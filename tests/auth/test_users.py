"""The users store: races that the HTTP tests cannot time."""

from __future__ import annotations

from fastapi import FastAPI

from service.auth.users import UserStore
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
