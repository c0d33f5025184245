"""Service metadata and health: `/`, liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from service.api.deps import RedisDep, SettingsDep, limit_public
from service.api.schemas import HealthOut, MessageOut, ReadyOut
from service.core.metrics import count_redis_error

router = APIRouter(tags=["meta"])


@router.get("/", response_model=MessageOut, dependencies=[Depends(limit_public)])
async def root() -> MessageOut:
    return MessageOut(message="secure-ml-api: Iris classifier. Log in at /token.", docs="/docs")


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """Liveness: the process answers. Never touches Redis, so a Redis outage restarts nothing."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"description": "Redis unreachable or model not loaded"}},
)
async def readyz(redis: RedisDep, settings: SettingsDep) -> JSONResponse:
    """Readiness: take this instance out of the load balancer while it cannot serve. The
    model is loaded before the app starts serving at all, so Redis is what can fail."""
    checks = {"model": "ok"}
    try:
        await asyncio.wait_for(redis.ping(), timeout=settings.redis_socket_timeout)
        checks["redis"] = "ok"
    except (RedisError, OSError, TimeoutError) as exc:
        count_redis_error(exc)
        checks["redis"] = "unreachable"
    failed = sorted(name for name, state in checks.items() if state != "ok")
    if failed:
        detail = "not ready: " + ", ".join(f"{name} {checks[name]}" for name in failed)
        return JSONResponse(
            {"detail": detail, "checks": checks},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    return JSONResponse({"status": "ready", "checks": checks})
