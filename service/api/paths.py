"""Path parameters shared by the routers.

A username in a path is a template segment that never matches `me`: `/users/me` is the
caller's own resource, so `PATCH /users/me` is 405 (only GET is defined there), not the
`PATCH /users/{username}` of a user named "me" (no such user can exist: names are 3+
characters). The pattern itself is still checked by FastAPI, so a malformed name is a 422.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from starlette.convertors import Convertor, register_url_convertor

from service.rules.accounts import USERNAME_PATTERN


class _NotMe(Convertor[str]):
    regex = "(?!me(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("username", _NotMe())

# In a route path: `/users/{username:username}`.
UsernamePath = Annotated[str, Path(pattern=USERNAME_PATTERN)]
SessionIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
