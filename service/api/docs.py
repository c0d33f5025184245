"""Swagger UI (`/docs`) and ReDoc (`/redoc`) that work without internet access.

The pages are FastAPI's own (`get_swagger_ui_html`, `get_redoc_html`, the OAuth2 redirect
page); their scripts, styles and favicon come from the pinned fastapi-offline package and are
served here, under a path that names the package's version, so browsers may cache them for
a year. Each page carries a Content-Security-Policy that lets it load nothing but this
origin: ReDoc 2 still asks https://cdn.redoc.ly for a logo, and the browser refuses.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from importlib import metadata, resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.responses import FileResponse, Response
from starlette.staticfiles import NotModifiedResponse
from starlette.types import Scope

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_DIR = str(resources.files("fastapi_offline") / "static")
# A new package version is a new path: the files under one path never change.
ASSETS_URL = f"/static/docs/{metadata.version('fastapi-offline')}"
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
CACHE_FOREVER = "public, max-age=31536000, immutable"

# What the two UIs need, measured in chromium (tests/serving/test_docs_browser.py): their
# own scripts and styles; Swagger UI's inline start-up script (allowed by its hash, not by
# 'unsafe-inline'); inline styles (ReDoc's page has a <style> and ReDoc injects more);
# data: images (both UIs' icons); a blob: worker (ReDoc); fetch() to this origin only
# (/openapi.json, the Authorize dialog's POST /token, "Try it out"). Nothing else.
_POLICY = (
    "default-src 'none'; script-src 'self'{scripts}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; worker-src blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def content_security_policy(page: bytes) -> str:
    """The docs pages' policy, allowing exactly the inline scripts of `page` (by hash)."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return _POLICY.format(scripts=hashes)


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = content_security_policy(bytes(page.body))
    return page


def _root(request: Request) -> str:
    """The prefix a proxy serves the app under, as FastAPI's own docs routes use it."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


async def swagger_ui(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    root = _root(request)
    redirect = app.swagger_ui_oauth2_redirect_url
    return _with_policy(
        get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=f"{root}{redirect}" if redirect else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
    )


async def swagger_ui_redirect() -> HTMLResponse:
    return _with_policy(get_swagger_ui_oauth2_redirect_html())


async def redoc(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    root = _root(request)
    return _with_policy(
        get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
    )


class _Assets(StaticFiles):
    """The asset folder: fixed content types (not the host's mime.types), cached for good.
    No rate limit, no authentication: the files are public and the same for everyone."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = FileResponse(
            full_path,
            status_code=status_code,
            stat_result=stat_result,
            media_type=ASSET_TYPES.get(os.path.splitext(full_path)[1]),
            headers={"Cache-Control": CACHE_FOREVER},
        )
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response


def install_docs(app: FastAPI) -> None:
    """Serve the docs pages and their assets; build the app with `docs_url=None,
    redoc_url=None` so that FastAPI's CDN-linked pages are not added too."""
    if app.docs_url or app.redoc_url:
        raise ValueError("create the app with docs_url=None and redoc_url=None")
    app.add_api_route(DOCS_URL, swagger_ui, include_in_schema=False)
    if app.swagger_ui_oauth2_redirect_url:
        app.add_api_route(
            app.swagger_ui_oauth2_redirect_url, swagger_ui_redirect, include_in_schema=False
        )
    app.add_api_route(REDOC_URL, redoc, include_in_schema=False)
    # A mount is its own route: metrics and logs label every asset `ASSETS_URL`.
    app.mount(ASSETS_URL, _Assets(directory=ASSETS_DIR), name="docs-assets")
