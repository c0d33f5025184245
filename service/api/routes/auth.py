"""Login, token refresh, logout, and the public keys that verify our tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from service.api.deps import CurrentUser, RuntimeDep, rate_limit
from service.api.schemas import LogoutRequest, RefreshRequest, TokenResponse
from service.auth.sessions import RefreshRefused
from service.auth.tokens import InvalidTokenError, TokenPair
from service.infra.context import request_context
from service.infra.errors import invalid_token
from service.limits.limiter import client_ip
from service.rules.policies import LOGIN, LOGIN_IP, LOGIN_USER, PUBLIC

router = APIRouter(tags=["auth"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_REFRESH_REFUSED = {
    "session_ended": "session ended",
    "refresh_reuse": "refresh token reuse detected: this session was ended",
}


def _token_response(response: Response, pair: TokenPair) -> TokenResponse:
    response.headers.update(NO_STORE)
    return TokenResponse(
        access_token=pair.access_token, expires_in=pair.expires_in, refresh_token=pair.refresh_token
    )


def _bad_credentials() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "Incorrect username or password",
        headers={"WWW-Authenticate": "Bearer"},
    )


@router.post(
    "/token",
    response_model=TokenResponse,
    dependencies=[
        Depends(rate_limit(LOGIN_IP)),
        Depends(rate_limit(LOGIN)),
        Depends(rate_limit(LOGIN_USER)),
    ],
    responses={401: {"description": "Wrong credentials"}, 429: {"description": "Too many tries"}},
)
async def login(
    request: Request,
    response: Response,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    runtime: RuntimeDep,
) -> TokenResponse:
    """OAuth2 password flow: starts a session. The same 401, in the same time, for any
    wrong credentials; only failures count against the per-username limit."""
    context = request_context()
    user = await runtime.users.authenticate(form.username, form.password)
    pair = None
    if user is not None:
        pair = await runtime.sessions.start(
            user.username,
            user.scopes,
            user.token_version,
            ip=client_ip(request),
            user_agent=request.headers.get("user-agent", ""),
        )
    if user is None or pair is None:
        context.auth_failure = "bad_credentials"
        raise _bad_credentials()
    await runtime.limits.refund(LOGIN_USER)
    context.user = user.username
    return _token_response(response, pair)


@router.post(
    "/token/refresh",
    response_model=TokenResponse,
    dependencies=[Depends(rate_limit(PUBLIC))],
    responses={401: {"description": "Refresh token refused"}},
)
async def refresh(response: Response, body: RefreshRequest, runtime: RuntimeDep) -> TokenResponse:
    """Rotate: a refresh token works once; presenting a spent one ends its session."""
    context = request_context()
    try:
        pair = await runtime.sessions.refresh(body.refresh_token)
    except RefreshRefused as exc:
        context.auth_failure = exc.reason
        raise invalid_token(_REFRESH_REFUSED.get(exc.reason)) from None
    return _token_response(response, pair)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={401: {"description": "Missing, invalid or expired token"}},
)
async def logout(
    user: CurrentUser, runtime: RuntimeDep, body: LogoutRequest | None = None
) -> Response:
    """End the caller's session (every token of it, on every instance), or with
    `{"all_sessions": true}` every session of the caller."""
    if body is not None and body.all_sessions:
        await runtime.sessions.end_all(user.username)
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    sessions = {user.claims.session}
    if body is not None and body.refresh_token is not None:
        # A refresh token of another session of the caller ends that one too.
        try:
            other = runtime.tokens.decode(body.refresh_token, "refresh")
        except InvalidTokenError:
            other = None
        if other is not None and other.subject == user.username:
            sessions.add(other.session)
    await runtime.sessions.end(user.username, *sessions)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/.well-known/jwks.json", dependencies=[Depends(rate_limit(PUBLIC))])
async def jwks(runtime: RuntimeDep) -> dict[str, Any]:
    """Public verification keys (ES256/RS256 modes); empty for HS256, whose key is secret."""
    return runtime.tokens.jwks()
