"""Login, token refresh, logout, and the public keys that verify our tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from service.api.deps import CurrentUser, RedisDep, ServicesDep, limit_login, limit_public
from service.api.schemas import LogoutRequest, RefreshRequest, TokenResponse
from service.core.errors import invalid_token
from service.core.redis import revoked_key, used_refresh_key, user_key
from service.core.security import InvalidTokenError, TokenPair
from service.core.users import new_token_version, normalize_username

router = APIRouter(tags=["auth"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_REFRESH_REFUSED = {
    2: "refresh token revoked",
    3: "refresh token no longer valid",
    4: "refresh token reuse detected: every session of this user was revoked",
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
    dependencies=[Depends(limit_login)],
    responses={401: {"description": "Wrong credentials"}, 429: {"description": "Too many tries"}},
)
async def login(
    request: Request,
    response: Response,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    services: ServicesDep,
) -> TokenResponse:
    """OAuth2 password flow: the same 401, in the same time, for any wrong credentials."""
    try:
        username = normalize_username(form.username)
    except ValueError:
        username = None
    user = await services.users.get(username) if username else None
    valid, new_hash = await services.users.hasher.verify(
        form.password, user.password_hash if user else None
    )
    if user is None or not valid or user.disabled:
        request.state.auth_failure = "bad_credentials"
        raise _bad_credentials()
    if new_hash is not None:
        await services.users.store_rehash(user, new_hash)
    request.state.user = user.username
    pair = services.tokens.issue_pair(user.username, user.scopes, user.token_version)
    return _token_response(response, pair)


@router.post(
    "/token/refresh",
    response_model=TokenResponse,
    dependencies=[Depends(limit_public)],
    responses={401: {"description": "Refresh token refused"}},
)
async def refresh(
    request: Request, response: Response, body: RefreshRequest, services: ServicesDep
) -> TokenResponse:
    """Rotate: a refresh token works once; presenting a used one revokes the whole user."""
    try:
        claims = services.tokens.decode(body.refresh_token, "refresh")
    except InvalidTokenError as exc:
        request.state.auth_failure = exc.reason
        raise invalid_token() from None
    outcome = await services.scripts.refresh(
        keys=[user_key(claims.subject), revoked_key(claims.jti), used_refresh_key(claims.jti)],
        args=[claims.version, claims.remaining_ms(), new_token_version()],
    )
    if int(outcome) != 0:
        request.state.auth_failure = "refresh_reuse" if int(outcome) == 4 else "revoked"
        raise invalid_token(_REFRESH_REFUSED[int(outcome)])
    request.state.user = claims.subject
    pair = services.tokens.issue_pair(claims.subject, claims.scopes, claims.version)
    return _token_response(response, pair)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    user: CurrentUser, services: ServicesDep, redis: RedisDep, body: LogoutRequest | None = None
) -> Response:
    """Revoke the presented access token, and the refresh token if one is given, until expiry."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(revoked_key(user.claims.jti), "1", px=user.claims.remaining_ms())
        if body is not None and body.refresh_token is not None:
            try:
                refresh_claims = services.tokens.decode(body.refresh_token, "refresh")
            except InvalidTokenError:
                refresh_claims = None
            if refresh_claims is not None and refresh_claims.subject == user.username:
                pipe.set(revoked_key(refresh_claims.jti), "1", px=refresh_claims.remaining_ms())
        await pipe.execute()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/.well-known/jwks.json", dependencies=[Depends(limit_public)])
async def jwks(services: ServicesDep) -> dict[str, Any]:
    """Public verification keys (ES256/RS256 modes); empty for HS256, whose key is secret."""
    return services.tokens.jwks()
