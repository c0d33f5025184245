"""The bare-framework ceiling of `make bench`: what FastAPI itself serves on this machine, in
the same run as the service, so the goals are ratios that the machine's speed cancels out of.

One app, no middleware, no dependency, no Redis, no logging: `POST /predict` answers a
constant small JSON without reading the body (wrk sends it the same body as the service's
`/predict`), `GET /healthz` likewise. It runs as the service does: gunicorn with 2 workers of
uvicorn-worker's `UvicornWorker`, on uvloop and httptools (named here, not left to "auto",
so a missing one fails instead of silently measuring asyncio or h11), without uvicorn's
access log:

    gunicorn -w 2 -k ceiling_app.Worker --pythonpath deploy/bench ceiling_app:app

deploy/bench/processes.py starts it on a free port.
"""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import FastAPI
from uvicorn_worker import UvicornWorker

# Same shape and about the same size as the service's answer to one row.
ANSWER: dict[str, Any] = {
    "prediction": 0,
    "label": "setosa",
    "probabilities": {"setosa": 1.0, "versicolor": 0.0, "virginica": 0.0},
    "model_version": "ceiling",
}

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.post("/predict")
async def predict() -> dict[str, Any]:
    return ANSWER


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


class Worker(UvicornWorker):  # type: ignore[misc]  # uvicorn_worker is untyped here
    """UvicornWorker with the event loop and HTTP parser pinned, and no access log."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
    }
