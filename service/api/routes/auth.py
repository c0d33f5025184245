"""The OAuth 2.0 endpoints (token, revocation, metadata), logout, and the public keys that
verify our tokens.

`POST /token` takes both grants of RFC 6749 (`password`, `refresh_token`), form-encoded, and
answers errors as §5.2 says; `POST /token/refresh` (JSON) is the older spelling of the
refresh grant. Rate limits follow the grant: a password grant counts against the login
policies, a refresh against the public one.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidGrantError
from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.api.deps import CurrentUser, RuntimeDep, rate_limit
from service.api.oauth import (
    FORM_TYPE,
    GRANT_TYPES,
    TemporarilyUnavailable,
    UnsupportedGrantType,
    check_public_client,
    narrowed_scopes,
    read_form,
    required,
)
from service.api.responses import AUTHENTICATED, BODY, LIMITED, errors
from service.api.schemas import (
    AuthorizationServerMetadata,
    LogoutRequest,
    OAuthErrorOut,
    PasswordGrant,
    RefreshGrant,
    RefreshRequest,
    RevokeForm,
    TokenResponse,
)
from service.auth.sessions import RefreshRefused
from service.auth.tokens import InvalidTokenError, TokenPair, TokenUse
from service.infra.context import request_context
from service.limits.limiter import RateLimited, client_ip
from service.rules.policies import LOGIN, LOGIN_IP, LOGIN_USER, PUBLIC, Policy
from service.rules.scopes import Scope

router = APIRouter(tags=["auth"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
CLIENT_PARAMETERS = frozenset({"client_id", "client_secret"})
TOKEN_PARAMETERS = CLIENT_PARAMETERS | {
    "grant_type",
    "username",
    "password",
    "refresh_token",
    "scope",
}
REVOKE_PARAMETERS = CLIENT_PARAMETERS | {"token", "token_type_hint"}
BAD_CREDENTIALS = "Incorrect username or password"
_REFRESH_REFUSED = {
    "refresh_reuse": "refresh token reuse detected: its session was ended",
    "session_ended": "the session of this refresh token has ended",
}


def _form_body(*models: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a form the route reads itself (to answer OAuth errors, not 422s): one of
    the models, told apart by `grant_type` when there are several."""
    schemas = [model.model_json_schema() for model in models]
    schema = schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
    return {"requestBody": {"required": True, "content": {FORM_TYPE: {"schema": schema}}}}


_OAUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": OAuthErrorOut,
        "description": "invalid_request, invalid_grant (wrong credentials, dead refresh "
        "token), unsupported_grant_type, invalid_scope, invalid_client",
    },
    401: {"model": OAuthErrorOut, "description": "invalid_client: a client secret was sent"},
    429: {"model": OAuthErrorOut, "description": "temporarily_unavailable: see Retry-After"},
}


def _token_response(response: Response, pair: TokenPair) -> TokenResponse:
    response.headers.update(NO_STORE)
    return TokenResponse(
        access_token=pair.access_token,
        expires_in=pair.expires_in,
        refresh_token=pair.refresh_token,
        scope=" ".join(sorted(pair.access_scopes)),
    )


async def _count(request: Request, response: Response, runtime: RuntimeDep, policy: Policy) -> None:
    """Count against a policy; its 429 is an OAuth error here (`temporarily_unavailable`),
    which OAuth clients raise instead of taking the body for a token."""
    try:
        await runtime.limits[policy](request, response)
    except RateLimited as exc:
        retry_after = int((exc.headers or {}).get("Retry-After", "1"))
        raise TemporarilyUnavailable(
            f"too many requests: retry after {retry_after} s", 429, retry_after
        ) from None


async def _password_grant(
    request: Request, response: Response, form: dict[str, str], runtime: RuntimeDep
) -> TokenPair:
    for policy in (LOGIN_IP, LOGIN, LOGIN_USER):
        await _count(request, response, runtime, policy)
    username, password = required(form, "username"), required(form, "password")
    context = request_context()
    user = await runtime.users.authenticate(username, password)
    pair = None
    if user is not None:
        pair = await runtime.sessions.start(
            user.username,
            narrowed_scopes(form, user.scopes),
            user.token_version,
            ip=client_ip(request),
            user_agent=request.headers.get("user-agent", ""),
        )
    if user is None or pair is None:
        context.auth_failure = "bad_credentials"
        raise InvalidGrantError(description=BAD_CREDENTIALS)
    await runtime.limits.refund(LOGIN_USER)
    context.user = user.username
    return pair


async def _refresh_grant(
    runtime: RuntimeDep, refresh_token: str, form: dict[str, str]
) -> TokenPair:
    context = request_context()
    try:
        claims = runtime.sessions.grant_of(refresh_token)
        access_scopes = narrowed_scopes(form, claims.scopes)
        pair = await runtime.sessions.refresh(claims, access_scopes)
    except RefreshRefused as exc:
        context.auth_failure = exc.reason
        description = _REFRESH_REFUSED.get(exc.reason, "refresh token invalid or expired")
        raise InvalidGrantError(description=description) from None
    context.user = claims.subject
    return pair


@router.post(
    "/token",
    response_model=TokenResponse,
    openapi_extra=_form_body(PasswordGrant, RefreshGrant),
    responses=_OAUTH_ERRORS | errors(413, 503),
)
async def token(request: Request, response: Response, runtime: RuntimeDep) -> TokenResponse:
    """The token endpoint: `grant_type=password` (username, password) starts a session;
    `grant_type=refresh_token` (refresh_token) rotates one. `scope` narrows the token. Wrong
    credentials are one `invalid_grant`, in the same time, whichever part was wrong; only
    failures count against the per-username limit."""
    form = await read_form(request, TOKEN_PARAMETERS)
    check_public_client(request, form)
    grant_type = required(form, "grant_type")
    if grant_type == "password":
        pair = await _password_grant(request, response, form, runtime)
    elif grant_type == "refresh_token":
        await _count(request, response, runtime, PUBLIC)
        pair = await _refresh_grant(runtime, required(form, "refresh_token"), form)
    else:
        raise UnsupportedGrantType()
    return _token_response(response, pair)


@router.post(
    "/token/refresh",
    response_model=TokenResponse,
    responses=BODY
    | errors(503, s400="invalid_grant: a dead refresh token; or a body that is not JSON")
    | {429: _OAUTH_ERRORS[429]},
)
async def refresh(
    request: Request, response: Response, body: RefreshRequest, runtime: RuntimeDep
) -> TokenResponse:
    """The refresh grant, as JSON: a refresh token works once; presenting a spent one ends
    its session."""
    await _count(request, response, runtime, PUBLIC)
    pair = await _refresh_grant(runtime, body.refresh_token, {})
    return _token_response(response, pair)


@router.post(
    "/revoke",
    status_code=status.HTTP_200_OK,
    openapi_extra=_form_body(RevokeForm),
    responses=_OAUTH_ERRORS
    | errors(413, 503)
    | {200: {"description": "Revoked, or was not a live token (RFC 7009 §2.2): `{}`"}},
)
async def revoke(request: Request, response: Response, runtime: RuntimeDep) -> JSONResponse:
    """RFC 7009: revoking either token of a session ends the session. The answer is the same
    whether or not the token was known."""
    await _count(request, response, runtime, PUBLIC)
    form = await read_form(request, REVOKE_PARAMETERS)
    check_public_client(request, form)
    token = required(form, "token")
    uses: tuple[TokenUse, TokenUse] = ("refresh", "access")
    if form.get("token_type_hint") == "access_token":
        uses = ("access", "refresh")
    for use in uses:
        try:
            claims = runtime.tokens.decode(token, use)
        except InvalidTokenError:
            continue
        await runtime.sessions.end(claims.subject, claims.session)
        break
    return JSONResponse({}, headers=NO_STORE)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=AUTHENTICATED | BODY,
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


@router.get("/.well-known/jwks.json", dependencies=[Depends(rate_limit(PUBLIC))], responses=LIMITED)
async def jwks(runtime: RuntimeDep) -> dict[str, Any]:
    """Public verification keys (ES256/RS256 modes); empty for HS256, whose key is secret."""
    return runtime.tokens.jwks()


@router.get(
    "/.well-known/oauth-authorization-server",
    response_model=AuthorizationServerMetadata,
    response_model_exclude_none=True,
    dependencies=[Depends(rate_limit(PUBLIC))],
    responses=LIMITED,
)
async def authorization_server_metadata(
    request: Request, runtime: RuntimeDep
) -> AuthorizationServerMetadata:
    """RFC 8414. URLs are absolute, built from the request's scheme and host as the trusted
    proxies forwarded them."""
    base = str(request.base_url).rstrip("/")
    return AuthorizationServerMetadata(
        issuer=base,
        token_endpoint=f"{base}/token",
        revocation_endpoint=f"{base}/revoke",
        grant_types_supported=list(GRANT_TYPES),
        # No authorization endpoint, hence no response types.
        response_types_supported=[],
        scopes_supported=[scope.value for scope in Scope],
        token_endpoint_auth_methods_supported=["none"],
        revocation_endpoint_auth_methods_supported=["none"],
        jwks_uri=f"{base}/.well-known/jwks.json" if runtime.tokens.publishes_keys else None,
    )
