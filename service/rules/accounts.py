"""Account rules: what a username, a password and a set of scopes must be.

A leaf module, so the settings (the bootstrap admin), the request schemas, the CLI and the
user store all apply the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from service.rules.scopes import Scope

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,64}$"
_USERNAME_RE = re.compile(USERNAME_PATTERN)
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024


def normalize_username(username: str) -> str:
    """Usernames compare case-insensitively: store and look up the lower-case form."""
    if not _USERNAME_RE.fullmatch(username):
        raise ValueError("username must be 3-64 characters of letters, digits, '_', '.', '-'")
    return username.lower()


def check_password(username: str, password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise ValueError(
            f"password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long"
        )
    if password.lower() == username.lower():
        raise ValueError("password must not be the username")
    return password


def check_scopes(scopes: Iterable[str]) -> frozenset[Scope]:
    """The scopes as `Scope` members; ValueError naming the known ones otherwise."""
    known = {scope.value for scope in Scope}
    names = set(scopes)
    unknown = names - known
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {sorted(known)}")
    return frozenset(Scope(name) for name in names)
