"""HTTP errors and the handlers that keep every failure a clean JSON answer (an unhandled
exception is answered by the middleware: see `ObservabilityMiddleware`).

No handler echoes the rejected input: FastAPI's default 422 does, and a NaN or Infinity in
it would make the error response itself fail with a 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from service.core.metrics import count_redis_error

logger = logging.getLogger(__name__)

REDIS_RETRY_AFTER_SECONDS = 1


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


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):
        raise exc
    errors = [_clean_error(dict(e)) for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("redis unavailable: %s", type(exc).__name__)
    count_redis_error(exc)
    return JSONResponse(
        {"detail": "Service temporarily unavailable: storage unreachable"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(REDIS_RETRY_AFTER_SECONDS)},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RedisError, _redis_unavailable)
