"""HTTP errors and the handlers that keep every failure a clean JSON answer (an unhandled
exception is answered by the middleware: see `ObservabilityMiddleware`).

No handler echoes the rejected input: FastAPI's default 422 does, and a NaN or Infinity in
it would make the error response itself fail with a 500.

Errors are `{"detail": ...}`, except under `/v2`: the Open Inference Protocol's clients read
`{"error": "..."}` (tritonclient raises `InferenceServerException` with that message, and a
confusing one for any other body), and call a bad request 400, not 422. Every answer there
keeps its status and headers (`WWW-Authenticate`, `Retry-After`, `Allow`), only the body's
shape differs; the middleware's own answers (413, 500, 503) follow the same rule.
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from service.infra.metrics import count_redis_error

logger = logging.getLogger(__name__)

REDIS_RETRY_AFTER_SECONDS = 1
# The Open Inference Protocol's routes (service/api/routes/v2.py) live under this prefix.
OPEN_INFERENCE_PREFIX = "/v2"


def open_inference(scope: Scope) -> bool:
    """Whether the request is one of the Open Inference Protocol's (errors: `{"error"}`)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path == OPEN_INFERENCE_PREFIX or path.startswith(OPEN_INFERENCE_PREFIX + "/")


def error_body(scope: Scope, detail: object) -> dict[str, object]:
    """An error's JSON body: `{"detail": ...}`, or `{"error": "..."}` under /v2."""
    if open_inference(scope):
        return {"error": detail if isinstance(detail, str) else str(detail)}
    return {"detail": detail}


def invalid_token(detail: str | None = None) -> HTTPException:
    """RFC 6750 401 for a token that was presented but cannot be used."""
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail or "Invalid or expired token",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def missing_token() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "Not authenticated",
        headers={"WWW-Authenticate": "Bearer"},
    )


def insufficient_scope(scope: str) -> HTTPException:
    return HTTPException(
        status.HTTP_403_FORBIDDEN,
        f"Token lacks the '{scope}' scope",
        headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
    )


def _clean_error(error: dict[str, object]) -> dict[str, object]:
    return {key: error[key] for key in ("type", "loc", "msg") if key in error}


def _one_line(errors: list[dict[str, object]]) -> str:
    """The first validation error as `where: what`, for the V2 error string."""
    if not errors:
        return "invalid request"
    loc = errors[0].get("loc")
    where = ".".join(map(str, loc)) if isinstance(loc, list | tuple) and loc else "request"
    return f"{where}: {errors[0].get('msg', 'invalid')}"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):
        raise exc
    errors = [_clean_error(dict(e)) for e in exc.errors()]
    if open_inference(request.scope):
        return JSONResponse({"error": _one_line(errors)}, status_code=status.HTTP_400_BAD_REQUEST)
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def raised_by_redis(exc: BaseException) -> bool:
    """Whether redis-py raised it. During a cluster failover redis-py 8 can raise more than
    RedisError (an AttributeError on a connection closed under an in-flight command,
    redis-py#4287); whatever it raises means the storage failed, not the request."""
    if isinstance(exc, RedisError):
        return True
    frame = exc.__traceback__
    while frame is not None:
        if f"{os.sep}redis{os.sep}" in frame.tb_frame.f_code.co_filename:
            return True
        frame = frame.tb_next
    return False


STORAGE_UNAVAILABLE = "Service temporarily unavailable: storage unreachable"


def storage_unavailable(exc: BaseException, scope: Scope | None = None) -> JSONResponse:
    """The 503 for a failed Redis call: fast, with Retry-After, never a stack trace."""
    logger.warning("redis unavailable: %s", type(exc).__name__)
    count_redis_error(exc)
    # `error`: OAuth clients of the token endpoint read it (RFC 6749 §5.2's shape); V2
    # clients read it as the message.
    body: dict[str, str] = (
        {"error": STORAGE_UNAVAILABLE}
        if scope is not None and open_inference(scope)
        else {"detail": STORAGE_UNAVAILABLE, "error": "temporarily_unavailable"}
    )
    return JSONResponse(
        body,
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(REDIS_RETRY_AFTER_SECONDS)},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer, except that a 405's `Allow` lists the methods of every route of the
    path (RFC 9110 15.5.6): Starlette names only those of the first route that matched. A
    literal path (`/users/me`) is its own resource, apart from a template that also matches
    it (`/users/{username}`)."""
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    if exc.status_code != status.HTTP_405_METHOD_NOT_ALLOWED:
        if open_inference(request.scope):
            return JSONResponse(
                error_body(request.scope, exc.detail),
                status_code=exc.status_code,
                headers=exc.headers,
            )
        return await http_exception_handler(request, exc)
    matching = [
        route
        for route in request.app.router.routes
        if getattr(route, "methods", None) and route.matches(request.scope)[0] is not Match.NONE
    ]
    literal = [route for route in matching if not getattr(route, "param_convertors", None)]
    allowed = {method for route in (literal or matching) for method in route.methods}
    return JSONResponse(
        error_body(request.scope, exc.detail),
        status_code=exc.status_code,
        headers={"Allow": ", ".join(sorted(allowed))},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RedisError, _redis_unavailable)


async def _redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return storage_unavailable(exc, request.scope)
