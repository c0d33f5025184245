"""The app factory: `create_app(settings)` builds an app; the lifespan opens Redis, loads the
model and ensures the admin user in each worker, and closes what it opened.

Run it with gunicorn: `gunicorn -c deploy/gunicorn.conf.py 'service.main:create_app()'`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api.routes import auth, meta, predict, users
from service.core import metrics
from service.core.config import Settings, load_settings
from service.core.errors import install_error_handlers
from service.core.logs import configure_logging
from service.core.middleware import BodySizeLimitMiddleware, ObservabilityMiddleware
from service.core.redis import Scripts, create_redis
from service.core.security import PasswordHasher, TokenService
from service.core.users import UserStore, normalize_username
from service.ml.artifact import load_model
from service.services import Limits, Services

logger = logging.getLogger(__name__)

DESCRIPTION = """
Iris species from four flower measurements (centimetres), for authenticated clients.

Log in with **Authorize** (OAuth2 password flow), then call `POST /predict`.
"""


async def _ensure_admin(settings: Settings, store: UserStore) -> None:
    if not settings.admin_username or settings.admin_password is None:
        return
    username = normalize_username(settings.admin_username)
    password = settings.admin_password.get_secret_value()
    if await store.get(username) is not None:
        return
    if await store.create(username, password, frozenset({"admin", "predict"})):
        logger.info("created admin user %r", username)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    predictor = load_model(settings.model_dir)
    redis = create_redis(settings)
    scripts = Scripts.register(redis)
    hasher = PasswordHasher(settings)
    users = UserStore(redis, scripts, hasher)
    services = Services(
        settings=settings,
        redis=redis,
        scripts=scripts,
        tokens=TokenService(settings),
        users=users,
        limits=Limits.build(settings, scripts),
        predictor=predictor,
    )
    app.state.services = services
    try:
        await _ensure_admin(settings, users)
        # The model and libraries leave ~150k long-lived objects: freeze them so that full
        # collections stop rescanning them (they caused the p99 tail).
        gc.collect()
        gc.freeze()
        version = predictor.manifest.version
        metrics.MODEL_INFO.labels(version).set(1)
        logger.info("ready: model %s", version, extra={"fields": {"model_version": version}})
        yield
    finally:
        await services.aclose()
        logger.info("stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings)
    app = FastAPI(
        title="secure-ml-api",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    app.state.settings = settings
    install_error_handlers(app)
    for module in (meta, auth, users, predict, metrics):
        app.include_router(module.router)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: it sees (and labels, logs and heads) every answer.
    docs = (app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url)
    app.add_middleware(ObservabilityMiddleware, csp_exempt_paths=[p for p in docs if p])
    return app
