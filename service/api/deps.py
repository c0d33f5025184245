"""Dependencies, declared once as `Annotated` aliases so a route signature says what it needs.

Token checks are split so that the hot path pays one Redis round trip: decoding and scope
checks are pure CPU; the revocation and user-state check then runs either alone
(`CurrentUser`) or inside the rate-limit script (`PredictUser`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import OAuth2PasswordBearer
from redis.asyncio import Redis

from service.core.config import Settings
from service.core.errors import insufficient_scope, invalid_token, missing_token
from service.core.ratelimit import GateStatus, refuse_token, run_gate
from service.core.security import InvalidTokenError, TokenClaims
from service.services import Services

oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl="token",
    scopes={"predict": "Call the prediction routes", "admin": "Manage users"},
    auto_error=False,
)


# Every dependency is `async def`: FastAPI runs a plain `def` one in the thread pool, which
# cost a thread hand-off per request (a third of the worker's CPU on the prediction path).
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(services: ServicesDep) -> Settings:
    return services.settings


async def get_redis(services: ServicesDep) -> Redis:
    return services.redis


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of this request."""

    username: str
    scopes: frozenset[str]
    claims: TokenClaims


async def access_claims(
    request: Request,
    services: ServicesDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> TokenClaims:
    """Verify the bearer token offline (signature, claims, use); no Redis yet."""
    if token is None:
        request.state.auth_failure = "missing"
        raise missing_token()
    try:
        claims = services.tokens.decode(token, "access")
    except InvalidTokenError as exc:
        request.state.auth_failure = exc.reason
        raise invalid_token() from None
    request.state.claims = claims
    request.state.user = claims.subject
    return claims


AccessClaims = Annotated[TokenClaims, Depends(access_claims)]


async def current_user(request: Request, claims: AccessClaims, services: ServicesDep) -> Principal:
    """A token that is valid now: not revoked, its user present, enabled and unchanged."""
    decision = await run_gate(services.scripts, claims=claims)
    if decision.status is not GateStatus.ADMITTED:
        raise refuse_token(request, decision.status)
    return Principal(claims.subject, claims.scopes, claims)


CurrentUser = Annotated[Principal, Depends(current_user)]


async def admin_user(request: Request, claims: AccessClaims, services: ServicesDep) -> Principal:
    """A revoked token is a 401 whatever its scopes; only a valid one can be a 403."""
    principal = await current_user(request, claims, services)
    if "admin" not in claims.scopes:
        raise insufficient_scope("admin")
    return principal


AdminUser = Annotated[Principal, Depends(admin_user)]


async def predict_user(
    request: Request, response: Response, claims: AccessClaims, services: ServicesDep
) -> Principal:
    """Token state and the per-user rate limit in one Redis round trip. Without the scope,
    the state is checked alone (a revoked token is a 401, not a 403) and nothing is counted."""
    if "predict" not in claims.scopes:
        await current_user(request, claims, services)
        raise insufficient_scope("predict")
    await services.limits.predict(request, response)
    return Principal(claims.subject, claims.scopes, claims)


PredictUser = Annotated[Principal, Depends(predict_user)]


async def limit_public(request: Request, response: Response, services: ServicesDep) -> None:
    await services.limits.public(request, response)


async def limit_login(request: Request, response: Response, services: ServicesDep) -> None:
    await services.limits.login_ip(request, response)
    await services.limits.login(request, response)
