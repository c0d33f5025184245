"""Every rate-limit policy, declared once.

A declaration gives the policy's name (its Redis counter and metric label), the name it
shows in the `RateLimit` headers, what it counts by, and its default rate. The settings
field (`RATE_LIMIT_<NAME>`), the FastAPI dependency and the headers all follow from it:
adding a policy is one declaration here plus one `Depends(rate_limit(POLICY))` on a route.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from service.rules.rates import Rate


class CountedBy(StrEnum):
    """What one counter of a policy belongs to."""

    USER = "user"  # the authenticated caller (token subject)
    USERNAME = "username"  # the username a login tries, whatever the client address
    CLIENT = "client"  # the client address (an IPv6 client by its /64)
    CLIENT_AND_USERNAME = "client+username"  # the client address and the username tried


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    header: str
    counted_by: CountedBy
    default: Rate
    description: str
    # The gate also checks the caller's token (revocation, user state) in the same round
    # trip, and an admin-set per-user rate replaces the default.
    per_user: bool = False
    # Only failures count: the route refunds a success (`Limits.refund`).
    failures_only: bool = False

    @property
    def setting(self) -> str:
        """The Settings field (and environment variable, upper-cased) holding its rate."""
        return "rate_limit_" + self.name.replace("-", "_")


PREDICT = Policy(
    "predict",
    header="default",
    counted_by=CountedBy.USER,
    default=Rate(60, 60),
    description="per-user limit on the prediction routes",
    per_user=True,
)
LOGIN = Policy(
    "login",
    header="login",
    counted_by=CountedBy.CLIENT_AND_USERNAME,
    default=Rate(5, 60),
    description="login attempts per client address and username",
)
LOGIN_USER = Policy(
    "login-user",
    header="login-user",
    counted_by=CountedBy.USERNAME,
    default=Rate(20, 60),
    description="failed login attempts per username, from all client addresses together",
    failures_only=True,
)
LOGIN_IP = Policy(
    "login-ip",
    header="login-ip",
    counted_by=CountedBy.CLIENT,
    default=Rate(30, 60),
    description="login attempts per client address, whatever the username",
)
PUBLIC = Policy(
    "public",
    header="public",
    counted_by=CountedBy.CLIENT,
    default=Rate(120, 60),
    description="unauthenticated routes (/, refresh, JWKS) per client address",
)

POLICIES: tuple[Policy, ...] = (PREDICT, LOGIN, LOGIN_USER, LOGIN_IP, PUBLIC)
