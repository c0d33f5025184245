"""Every Redis key the service writes, in one place: what an operator must back up, what a
Redis ACL must allow (the `sma:` prefix), and what the Lua scripts receive as KEYS.

Keys carry a Redis Cluster hash tag, `{...}`: everything of one user (record, sessions,
per-user counters) shares `{u:<name>}`, and a client address's counters share
`{c:<address>}`, so every script's keys live in one slot whatever the topology.
"""

from __future__ import annotations

KEY_PREFIX = "sma:"
# The names of all users (for listing); never touched by a script with other keys.
USERS_SET = f"{KEY_PREFIX}users"
# Held for a moment while a change that could remove the last enabled admin is checked.
ADMIN_CHANGE_LOCK = f"{KEY_PREFIX}admin-change-lock"


def user_tag(username: str) -> str:
    return f"{{u:{username}}}"


def client_tag(client: str) -> str:
    return f"{{c:{client}}}"


def user_key(username: str) -> str:
    """Hash: password hash, scopes, disabled flag, token_version, per-user rate."""
    return f"{KEY_PREFIX}{user_tag(username)}:user"


def sessions_key(username: str) -> str:
    """Sorted set: the user's session ids, scored by creation time (ms)."""
    return f"{KEY_PREFIX}{user_tag(username)}:sessions"


def session_key(username: str, sid: str) -> str:
    """Hash: one session (current refresh token id, times, login address and agent)."""
    return f"{KEY_PREFIX}{user_tag(username)}:s:{sid}"


def rate_key(policy: str, tag: str) -> str:
    """One rate-limit counter of a policy; `tag` is `user_tag(...)` or `client_tag(...)`."""
    return f"{KEY_PREFIX}{tag}:rl:{policy}"


def legacy_user_key(username: str) -> str:
    """Where releases before sessions kept a user (moved at start-up, see UserStore)."""
    return f"{KEY_PREFIX}user:{username}"
