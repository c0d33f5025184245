"""Login, token refresh, logout, and the public keys that verify our tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from service.api.deps import CurrentUser, RuntimeDep, rate_limit
from service.api.schemas import LogoutRequest, RefreshRequest, TokenResponse
from service.auth.revocation import Rotation
from service.auth.tokens import InvalidTokenError, TokenPair
from service.infra.context import request_context
from service.infra.errors import invalid_token
from service.rules.policies import LOGIN, LOGIN_IP, PUBLIC

router = APIRouter(tags=["auth"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_REFRESH_REFUSED = {
    Rotation.REVOKED: ("revoked", "refresh token revoked"),
    Rotation.STALE: ("revoked", "refresh token no longer valid"),
    Rotation.REUSED: (
        "refresh_reuse",
        "refresh token reuse detected: every session of this user was revoked",
    ),
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
    dependencies=[Depends(rate_limit(LOGIN_IP)), Depends(rate_limit(LOGIN))],
    responses={401: {"description": "Wrong credentials"}, 429: {"description": "Too many tries"}},
)
async def login(
    response: Response,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    runtime: RuntimeDep,
) -> TokenResponse:
    """OAuth2 password flow: the same 401, in the same time, for any wrong credentials."""
    user = await runtime.users.authenticate(form.username, form.password)
    context = request_context()
    if user is None:
        context.auth_failure = "bad_credentials"
        raise _bad_credentials()
    context.user = user.username
    pair = runtime.tokens.issue_pair(user.username, user.scopes, user.token_version)
    return _token_response(response, pair)


@router.post(
    "/token/refresh",
    response_model=TokenResponse,
    dependencies=[Depends(rate_limit(PUBLIC))],
    responses={401: {"description": "Refresh token refused"}},
)
async def refresh(response: Response, body: RefreshRequest, runtime: RuntimeDep) -> TokenResponse:
    """Rotate: a refresh token works once; presenting a used one revokes the whole user."""
    context = request_context()
    try:
        claims = runtime.tokens.decode(body.refresh_token, "refresh")
    except InvalidTokenError as exc:
        context.auth_failure = exc.reason
        raise invalid_token() from None
    outcome = await runtime.revocations.rotate(claims)
    if outcome is not Rotation.ROTATED:
        context.auth_failure, detail = _REFRESH_REFUSED[outcome]
        raise invalid_token(detail)
    context.user = claims.subject
    pair = runtime.tokens.issue_pair(claims.subject, claims.scopes, claims.version)
    return _token_response(response, pair)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    user: CurrentUser, runtime: RuntimeDep, body: LogoutRequest | None = None
) -> Response:
    """Revoke the presented access token, and the refresh token if one is given, until expiry."""
    revoked = [user.claims]
    if body is not None and body.refresh_token is not None:
        try:
            refresh_claims = runtime.tokens.decode(body.refresh_token, "refresh")
        except InvalidTokenError:
            refresh_claims = None
        if refresh_claims is not None and refresh_claims.subject == user.username:
            revoked.append(refresh_claims)
    await runtime.revocations.revoke(*revoked)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/.well-known/jwks.json", dependencies=[Depends(rate_limit(PUBLIC))])
async def jwks(runtime: RuntimeDep) -> dict[str, Any]:
    """Public verification keys (ES256/RS256 modes); empty for HS256, whose key is secret."""
    return runtime.tokens.jwks()
