"""The app factory: `create_app(settings)` loads the verified model and builds the app; its
lifespan opens the worker's `Runtime` (Redis, the stores) and ensures the admin user, and
closes what it opened.

Run it with gunicorn: `gunicorn -c deploy/gunicorn.conf.py 'service.main:create_app()'`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from authlib.oauth2.base import OAuth2Error
from fastapi import FastAPI, Request, Response

from service.api.direct import PredictionLane
from service.api.docs import install_docs
from service.api.oauth import oauth_error_response
from service.api.routes import auth, meta, predict, sessions, users, v2
from service.infra import metrics
from service.infra.config import Settings, load_settings
from service.infra.errors import install_error_handlers
from service.infra.logs import configure_logging, defer_access_log
from service.infra.middleware import BodySizeLimitMiddleware, ObservabilityMiddleware
from service.ml.artifact import load_model
from service.runtime import Runtime

logger = logging.getLogger(__name__)

DESCRIPTION = """
{name}: predicts {classes} from {features}, for authenticated clients.

Log in with **Authorize** (OAuth2 password flow), then call `POST /predict`, or
`POST /v2/models/{name}/infer` (the Open Inference Protocol, as tritonclient speaks it).
"""


# Above what a worker holds at once at 64 connections of 64-row batches (no young collection
# in steady state, measured in-process), and still a collection of ~1 ms when one comes.
YOUNG_COLLECTION_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """Freeze what startup left, and collect the young generation only every
    `YOUNG_COLLECTION_THRESHOLD` net allocations instead of Python's 700.

    The model and libraries leave ~150k long-lived objects: frozen, full collections stop
    rescanning them (they caused the p99 tail). Under gunicorn the master has collected and
    frozen them before forking (deploy/gunicorn.conf.py); this freezes what the worker itself
    built, at no cost. A request's objects are freed by their reference counts, not by the
    collector; but a worker holding 32 batch requests at once has thousands of them alive,
    so at 700 a young collection ran every ~12 batches, each rescanning what the requests in
    flight still held (~25 µs of a 64-row batch's CPU, ~5%; `/predict` barely allocates).
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    runtime = Runtime.open(app.state.settings, app.state.predictor)
    served = runtime.predictor.manifest
    app.state.runtime = runtime
    flushing = asyncio.create_task(metrics.HOT_PATH.flush_periodically())
    stop_access_log = defer_access_log()
    catching_up = None
    try:
        if not await runtime.prepare_storage():
            catching_up = asyncio.create_task(runtime.keep_preparing_storage())
        settle_garbage_collector()
        metrics.MODEL_INFO.labels(served.version).set(1)
        logger.info(
            "ready: model %s", served.version, extra={"fields": {"model_version": served.version}}
        )
        yield
    finally:
        flushing.cancel()
        metrics.HOT_PATH.flush()
        stop_access_log()
        if catching_up is not None:
            catching_up.cancel()
        await runtime.close()
        logger.info("stopped")


async def _oauth_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, OAuth2Error):
        raise exc
    return oauth_error_response(exc)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings)
    # Loaded here, not in the lifespan: with gunicorn's preload_app this runs once in the
    # master, before the workers fork, so a new or reloaded instance's workers are ready at
    # once (and share the model's memory). Sockets, by contrast, are opened per worker.
    predictor = load_model(settings.model_dir)
    manifest = predictor.manifest
    app = FastAPI(
        title="secure-ml-api",
        version="0.1.0",
        description=DESCRIPTION.format(
            name=manifest.name,
            classes=", ".join(manifest.class_names),
            features=", ".join(manifest.feature_names),
        ),
        lifespan=lifespan,
        docs_url=None,  # install_docs serves /docs and /redoc from local files
        redoc_url=None,
        # Tokens stay in the page's memory: persisting them to localStorage would hand them
        # to any script that ever runs on this origin, and outlive the tab.
        swagger_ui_parameters={"persistAuthorization": False},
    )
    app.state.settings = settings
    app.state.predictor = predictor
    install_error_handlers(app)
    app.add_exception_handler(OAuth2Error, _oauth_error)
    # Routing tries routes in order: the prediction routes, the hot path, come first.
    for router in (
        predict.build_router(manifest),
        v2.build_router(manifest),
        meta.router,
        auth.router,
        users.router,
        sessions.router,
        metrics.router,
    ):
        app.include_router(router)
    install_docs(app)
    # Middleware added first sits innermost: the lane hands prediction requests to their
    # route right below the body-size limit.
    app.add_middleware(PredictionLane, routes_of=app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: it sees (and labels, logs and heads) every answer.
    app.add_middleware(ObservabilityMiddleware)
    return app
