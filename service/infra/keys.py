"""Every Redis key the service writes, in one place: what an operator must back up, what a
Redis ACL must allow (the `sma:` prefix), and what the Lua scripts receive as KEYS."""

from __future__ import annotations

KEY_PREFIX = "sma:"
USERS_SET = f"{KEY_PREFIX}users"


def user_key(username: str) -> str:
    return f"{KEY_PREFIX}user:{username}"


def revoked_key(jti: str) -> str:
    return f"{KEY_PREFIX}revoked:{jti}"


def used_refresh_key(jti: str) -> str:
    return f"{KEY_PREFIX}refresh-used:{jti}"


def rate_key(policy: str, identity: str) -> str:
    return f"{KEY_PREFIX}rl:{policy}:{identity}"
