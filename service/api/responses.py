"""The error statuses each operation documents in OpenAPI, from one catalogue, so every status
a route can answer is in the schema (clients and schemathesis read it) and each is described
the same way everywhere."""

from __future__ import annotations

from typing import Any

from service.api.schemas import ErrorOut

Responses = dict[int | str, dict[str, Any]]

_CATALOGUE: dict[int, str] = {
    400: "Malformed body: not UTF-8 or not JSON, or a bad Content-Length",
    401: "Missing, invalid or expired token, or its session has ended (WWW-Authenticate)",
    403: "The token lacks the scope this route needs",
    404: "No such resource",
    409: "Conflicts with the current state",
    413: "Body over MAX_BODY_BYTES (refused before it is parsed)",
    429: "Rate limited: see Retry-After and the RateLimit fields",
    503: "Redis unreachable: retry after Retry-After",
}


def errors(*statuses: int, **described: str) -> Responses:
    """The catalogue's entries for `statuses`, plus route-specific ones given as
    `s404="No such user"` (keyword names are `s` + the status)."""
    documented: Responses = {
        status: {"model": ErrorOut, "description": _CATALOGUE[status]} for status in statuses
    }
    for key, description in described.items():
        documented[int(key.removeprefix("s"))] = {"model": ErrorOut, "description": description}
    return documented


# What the common kinds of route can answer besides their own statuses.
BODY = errors(400, 413)
STORAGE = errors(503)
AUTHENTICATED = errors(401, 503)
ADMIN = errors(401, 403, 503)
LIMITED = errors(429, 503)
