"""The rate syntax, `N/second|minute|hour|day`, and its parsed form.

A leaf module: settings, request schemas and the user store all parse rates with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

# The gate keeps one small counter per key whatever N is; the cap keeps N inside what every
# part of the pipeline (headers, Lua numbers) represents exactly.
MAX_RATE_LIMIT = 100_000
RATE_PATTERN = r"^\s*0*([1-9][0-9]{0,4}|100000)/(second|minute|hour|day)s?\s*$"
# ASCII only: Unicode digits, spaces and case folding (U+017F folds to "s") are not syntax.
_RATE_RE = re.compile(RATE_PATTERN, re.IGNORECASE | re.ASCII)
PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_PERIOD_NAMES = {seconds: name for name, seconds in PERIODS.items()}


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate limit: `limit` requests per `window` seconds."""

    limit: int
    window: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse `N/second|minute|hour|day`; raise ValueError naming the accepted syntax
        (never quoting the rejected text, which may be anything a client sent)."""
        match = _RATE_RE.match(text)
        if not match:
            raise ValueError(
                "invalid rate: expected N/second, N/minute, N/hour or N/day "
                f"with N from 1 to {MAX_RATE_LIMIT}"
            )
        return cls(int(match.group(1)), PERIODS[match.group(2).lower()])

    def __str__(self) -> str:
        return f"{self.limit}/{_PERIOD_NAMES[self.window]}"


def _coerce(value: Any) -> Rate:
    if isinstance(value, Rate):
        return value
    if isinstance(value, str):
        return Rate.parse(value)
    raise ValueError("expected a rate such as 60/minute")


# A `Rate` in a pydantic model (settings): given as text, kept parsed, shown as text.
RateField = Annotated[
    Rate,
    PlainValidator(_coerce),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": RATE_PATTERN}),
]
