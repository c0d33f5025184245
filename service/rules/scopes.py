"""The scopes a token can carry: what its holder may do."""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    PREDICT = "predict"
    ADMIN = "admin"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Scope.PREDICT: "Call the prediction routes",
    Scope.ADMIN: "Manage users",
}
