"""Dependencies, declared once as `Annotated` aliases so a route signature says what it needs.

Token checks are split so that the hot path pays one Redis round trip: decoding and scope
checks are pure CPU; the token's state is then checked by the gate either alone
(`CurrentUser`) or inside the per-user rate count (`PredictAccess`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import OAuth2PasswordBearer

from service.auth.tokens import InvalidTokenError, TokenClaims
from service.infra.context import request_context
from service.infra.errors import insufficient_scope, invalid_token, missing_token
from service.limits.gate import GateStatus
from service.limits.limiter import refuse_token
from service.rules.policies import PREDICT, Policy
from service.rules.scopes import Scope
from service.runtime import Runtime

oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl="token",
    scopes={scope.value: scope.description for scope in Scope},
    auto_error=False,
)


# Every dependency is `async def`: FastAPI runs a plain `def` one in the thread pool, which
# cost a thread hand-off per request (a third of the worker's CPU on the prediction path).
# The token dependencies below take the request and the bearer token and nothing else:
# FastAPI solves every node of a dependency tree on every request (a cached node too), so a
# chain of small dependencies costs more than the work they do.
async def get_runtime(request: Request) -> Runtime:
    return _runtime(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
BearerToken = Annotated[str | None, Depends(oauth2_scheme)]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of this request."""

    username: str
    scopes: frozenset[Scope]
    claims: TokenClaims


@dataclass(frozen=True, slots=True)
class Admission:
    """A caller admitted to predict (token valid, request counted), and the runtime that
    serves it."""

    principal: Principal
    runtime: Runtime


def _access_claims(runtime: Runtime, token: str | None) -> TokenClaims:
    """Verify the bearer token offline (signature, claims, use); no Redis yet."""
    context = request_context()
    if token is None:
        context.auth_failure = "missing"
        raise missing_token()
    try:
        claims = runtime.tokens.decode(token, "access")
    except InvalidTokenError as exc:
        context.auth_failure = exc.reason
        raise invalid_token() from None
    context.user = claims.subject
    return claims


async def _admitted(runtime: Runtime, claims: TokenClaims) -> Principal:
    """A token that is valid now: not revoked, its user present, enabled and unchanged."""
    state = await runtime.gate.check_token(claims)
    if state is not GateStatus.ADMITTED:
        raise refuse_token(state)
    return Principal(claims.subject, claims.scopes, claims)


async def current_user(request: Request, token: BearerToken) -> Principal:
    runtime = _runtime(request)
    return await _admitted(runtime, _access_claims(runtime, token))


CurrentUser = Annotated[Principal, Depends(current_user)]


async def admin_user(request: Request, token: BearerToken) -> Principal:
    """A revoked token is a 401 whatever its scopes; only a valid one can be a 403."""
    principal = await current_user(request, token)
    if Scope.ADMIN not in principal.scopes:
        raise insufficient_scope(Scope.ADMIN)
    return principal


AdminUser = Annotated[Principal, Depends(admin_user)]


async def admit_prediction(request: Request, response: Response, token: BearerToken) -> Admission:
    """Token state and the per-user rate limit in one Redis round trip. Without the scope,
    the state is checked alone (a revoked token is a 401, not a 403) and nothing is counted.
    The prediction routes' `PredictionRoute` (service/api/direct.py) calls it directly."""
    runtime = _runtime(request)
    claims = _access_claims(runtime, token)
    if Scope.PREDICT not in claims.scopes:
        await _admitted(runtime, claims)
        raise insufficient_scope(Scope.PREDICT)
    await runtime.limits[PREDICT](request, response, claims)
    return Admission(Principal(claims.subject, claims.scopes, claims), runtime)


PredictAccess = Annotated[Admission, Depends(admit_prediction)]


def rate_limit(policy: Policy) -> Callable[[Request, Response], Awaitable[None]]:
    """The dependency that counts a request against `policy`:
    `dependencies=[Depends(rate_limit(PUBLIC))]`."""

    async def count(request: Request, response: Response) -> None:
        await _runtime(request).limits[policy](request, response)

    return count
