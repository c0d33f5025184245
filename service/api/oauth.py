"""OAuth 2.0 at the HTTP layer: reading the token and revocation requests (RFC 6749 §4.3,
§6; RFC 7009), identifying public clients, and the RFC 6749 §5.2 error answers.

The error types are authlib's (`authlib.oauth2.rfc6749.errors`); their descriptions here
are fixed sentences, never anything a client sent. authlib's server classes are not used:
they are synchronous, and every check behind this endpoint is an `await` on Redis.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_plus

from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
)
from authlib.oauth2.rfc6749.util import scope_to_list
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from service.rules.scopes import Scope

FORM_TYPE = "application/x-www-form-urlencoded"
GRANT_TYPES = ("password", "refresh_token")


class UnsupportedGrantType(OAuth2Error):  # type: ignore[misc]
    """authlib's UnsupportedGrantTypeError quotes the grant type sent; this one does not."""

    error = "unsupported_grant_type"

    def __init__(self) -> None:
        super().__init__(description=f"supported grant types: {', '.join(GRANT_TYPES)}")


class TemporarilyUnavailable(OAuth2Error):  # type: ignore[misc]
    """A 429 or 503 that OAuth clients recognise as an error, not as a token: they raise
    on an `error` member, and would otherwise take any JSON body for a token."""

    error = "temporarily_unavailable"

    def __init__(self, description: str, status_code: int, retry_after: int) -> None:
        super().__init__(description=description, status_code=status_code)
        self.retry_after = retry_after

    def get_headers(self) -> list[tuple[str, str]]:
        return [*super().get_headers(), ("Retry-After", str(self.retry_after))]


async def read_form(request: Request, known: frozenset[str]) -> dict[str, str]:
    """The form's `known` parameters: empty ones are absent and a repeated one is an error
    (RFC 6749 §3.1); others are ignored (clients send extras, e.g. `allow_redirects`)."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise InvalidRequestError(description=f"the body must be {FORM_TYPE}")
    try:
        form = await request.form()
    except HTTPException:  # Starlette's 400 for a body python-multipart cannot parse
        raise InvalidRequestError(description="the form cannot be parsed") from None
    values: dict[str, str] = {}
    for key, value in form.multi_items():
        if key not in known:
            continue
        if not isinstance(value, str):
            raise InvalidRequestError(description="parameters must be text")
        if not value:
            continue
        if key in values:
            raise InvalidRequestError(description="a parameter is repeated")
        values[key] = value
    return values


def check_public_client(request: Request, form: dict[str, str]) -> None:
    """Clients are public: a client_id (in the body, or HTTP Basic with an empty secret, as
    Swagger UI and requests-oauthlib send) is accepted and ignored; a secret is refused."""
    basic_id = None
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    # Anything but Basic (a bearer token a client sends everywhere) is no client auth.
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidClientError(
                description="malformed HTTP Basic credentials", status_code=401
            ) from None
        client_id, _, secret = decoded.partition(":")
        if secret:
            raise InvalidClientError(
                description="clients are public: send no client secret", status_code=401
            )
        basic_id = unquote_plus(client_id) or None
    if "client_secret" in form:
        raise InvalidClientError(description="clients are public: send no client secret")
    body_id = form.get("client_id")
    if basic_id is not None and body_id is not None and basic_id != body_id:
        raise InvalidRequestError(description="two different client ids")


def required(form: dict[str, str], name: str) -> str:
    value = form.get(name)
    if value is None:
        raise InvalidRequestError(description=f"{name} is required")
    return value


def narrowed_scopes(form: dict[str, str], granted: frozenset[Scope]) -> frozenset[Scope]:
    """The optional `scope` parameter: a subset of what was granted (RFC 6749 §3.3)."""
    raw = form.get("scope")
    if raw is None:
        return granted
    names = set(scope_to_list(raw) or ())
    if not names <= {scope.value for scope in granted}:
        raise InvalidScopeError(description="the scope asked exceeds the one granted")
    return frozenset(Scope(name) for name in names)


def oauth_error_response(error: OAuth2Error) -> JSONResponse:
    """An RFC 6749 §5.2 body, `{"error", "error_description"}`, with `detail` too (this
    API's error convention) and the error's own headers (no-store, WWW-Authenticate)."""
    body = dict(error.get_body())
    body["detail"] = body.get("error_description", body["error"])
    headers = {name: value for name, value in error.get_headers() if name != "Content-Type"}
    return JSONResponse(body, status_code=error.status_code or 400, headers=headers)
