"""Service metadata and health: `/`, liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse

from service.api.deps import RuntimeDep, rate_limit
from service.api.responses import LIMITED
from service.api.schemas import HealthOut, MessageOut, NotReadyOut, ReadyOut
from service.rules.policies import PUBLIC

router = APIRouter(tags=["meta"])

# From this fraction of Redis's maxmemory on, readiness reports memory pressure.
MEMORY_PRESSURE_RATIO = 0.9


@router.get(
    "/", response_model=MessageOut, dependencies=[Depends(rate_limit(PUBLIC))], responses=LIMITED
)
async def root(runtime: RuntimeDep) -> MessageOut:
    name = runtime.predictor.manifest.name
    return MessageOut(message=f"secure-ml-api: serving {name}. Log in at /token.", docs="/docs")


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """Liveness: the process answers. Never touches Redis, so a Redis outage restarts nothing."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"model": NotReadyOut, "description": "Redis unreachable: not ready"}},
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Readiness: take this instance out of the load balancer while it cannot serve. The
    model is loaded before the app starts serving at all, so Redis is what can fail.

    Redis memory near `maxmemory` is reported (`redis_memory`) but keeps the instance ready:
    every instance shares that Redis, so failing readiness would turn a warning into an
    outage. Alert on the `redis_memory_used_ratio` metric instead."""
    memory = await runtime.storage_memory()
    checks = {"model": "ok", "redis": "ok" if memory is not None else "unreachable"}
    if memory is not None:
        high = memory >= MEMORY_PRESSURE_RATIO
        checks["redis_memory"] = f"high: {memory:.0%} of maxmemory" if high else "ok"
    failed = sorted(name for name in ("model", "redis") if checks[name] != "ok")
    if failed:
        detail = "not ready: " + ", ".join(f"{name} {checks[name]}" for name in failed)
        return JSONResponse(
            {"detail": detail, "checks": checks},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    return JSONResponse({"status": "ready", "checks": checks})
