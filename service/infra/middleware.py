"""Pure ASGI middleware (no BaseHTTPMiddleware: it turns exceptions into 500s and costs a
task per request)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable

import orjson
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.infra import metrics
from service.infra.context import RequestContext, close_context, open_context
from service.infra.errors import error_body, raised_by_redis, storage_unavailable
from service.infra.logs import ACCESS_LOGGER, AccessEntry, log_access

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def _send_json(send: Send, status: int, body: bytes, *, close: bool = True) -> None:
    """A whole JSON answer from middleware; `close` when the request body was left unread."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """Answer 413 before any parsing when a body exceeds `max_bytes`.

    The body is read here, at most `max_bytes` of it, then replayed to the app: a declared
    Content-Length that is too large is refused without reading, and a chunked body is
    refused as soon as it crosses the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self._too_large = f"Request body too large: at most {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await _send_error(send, scope, 400, "Invalid Content-Length")
                    return
                if int(value) > self.max_bytes:
                    await _send_error(send, scope, 413, self._too_large)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_error(send, scope, 413, self._too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        await self.app(scope, _replay([{"type": "http.request", "body": body}], receive), send)


async def _send_error(send: Send, scope: Scope, status: int, message: str) -> None:
    await _send_json(send, status, orjson.dumps(error_body(scope, message)))


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


logger = logging.getLogger(__name__)
access_logger = logging.getLogger(ACCESS_LOGGER)

_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._-]{1,128}")
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
# JSON answers need nothing from a browser. An answer that brings its own policy keeps it
# instead (the docs pages: service/api/docs.py); two policies would both be enforced.
CONTENT_SECURITY_POLICY = (
    b"content-security-policy",
    b"default-src 'none'; frame-ancestors 'none'",
)


def _ratelimit_headers(context: RequestContext) -> list[tuple[bytes, bytes]]:
    """The RateLimit fields of every policy that counted this request, in the order they
    counted it (the draft lists several policies comma-separated)."""
    fields = context.ratelimit_fields
    if not fields:
        return []
    return [
        (b"ratelimit-policy", ", ".join(policy for policy, _ in fields).encode()),
        (b"ratelimit", ", ".join(remaining for _, remaining in fields).encode()),
    ]


def _request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is short and plain, else a new random one."""
    for name, value in headers:
        if name == b"x-request-id":
            if _REQUEST_ID_RE.fullmatch(value):
                return value.decode("ascii")
            break
    return os.urandom(16).hex()


class ObservabilityMiddleware:
    """Everything per request in one pass: request id, security headers, metrics, the
    access log line, and a JSON 500 for an unhandled exception.

    Installed outermost, so it also sees the answers of the other middleware (413, 400).
    Request metrics are tallied in memory (see `metrics.HOT_PATH`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _request_id(scope["headers"])
        context, token = open_context(request_id)
        extra_headers = [*SECURITY_HEADERS, (b"x-request-id", request_id.encode("ascii"))]
        status = 500
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                headers = list(message.get("headers", ()))
                if not any(name.lower() == CONTENT_SECURITY_POLICY[0] for name, _ in headers):
                    headers.append(CONTENT_SECURITY_POLICY)
                message["headers"] = [*headers, *extra_headers, *_ratelimit_headers(context)]
            await send(message)

        metrics.HOT_PATH.in_flight += 1
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if raised_by_redis(exc):
                if not started:
                    await storage_unavailable(exc, scope)(scope, receive, send_with_headers)
            else:
                logger.exception("unhandled error in %s %s", scope["method"], _route(scope))
                # Once the response has started, returning without finishing it makes the
                # server close the connection: the client sees a broken response, not a
                # false success.
                if not started:
                    await _send_internal_error(send_with_headers, scope, request_id)
        finally:
            metrics.HOT_PATH.in_flight -= 1
            self._finish(scope, context, status, time.perf_counter() - start)
            close_context(token)

    def _finish(self, scope: Scope, context: RequestContext, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in _KNOWN_METHODS else "OTHER"
        route = _route(scope)
        metrics.HOT_PATH.request_finished(method, route, status, seconds)
        if context.auth_failure is not None:
            metrics.AUTH_FAILURES.labels(context.auth_failure).inc()
        if access_logger.isEnabledFor(logging.INFO):
            client = scope.get("client")
            log_access(
                AccessEntry(
                    time.time(),
                    context.request_id,
                    method,
                    route,
                    status,
                    round(seconds * 1000, 3),
                    context.user,
                    client[0] if client else None,
                )
            )


def _route(scope: Scope) -> str:
    route = scope.get("route")
    # A route's template as documented (`/users/{username}`, without convertors); a mount's
    # prefix.
    path = route.path_format if isinstance(route, Route) else getattr(route, "path", None)
    return path if isinstance(path, str) else metrics.UNMATCHED_ROUTE


async def _send_internal_error(send: Send, scope: Scope, request_id: str) -> None:
    body = error_body(scope, "Internal server error")
    if "error" in body:  # V2: one message string
        body["error"] = f"Internal server error (request id {request_id})"
    else:
        body["request_id"] = request_id
    await _send_json(send, 500, orjson.dumps(body), close=False)
