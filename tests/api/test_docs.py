"""/docs and /redoc without internet: the pages link only local assets, carry a policy that
lets them load nothing else, and the assets are public, unlimited, cached and typed.

The browser's view of the same pages is tests/serving/test_docs_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from service.api.docs import ASSETS_DIR, ASSETS_URL, CACHE_FOREVER
from tests.support.prom import value

PAGES = ("/docs", "/redoc", "/docs/oauth2-redirect")
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
JSON_POLICY = "default-src 'none'; frame-ancestors 'none'"


def _directives(policy: str) -> dict[str, list[str]]:
    return {
        name: values
        for name, *values in (part.split() for part in policy.split(";") if part.strip())
    }


async def test_pages_link_local_assets_only(client: httpx.AsyncClient) -> None:
    for path in ("/docs", "/redoc"):
        page = (await client.get(path)).text
        links = re.findall(r'(?:src|href)="([^"]*)"', page)
        assert links, path
        assert all(link.startswith(f"{ASSETS_URL}/") for link in links), links
        assert "://" not in page, path
    swagger = (await client.get("/docs")).text
    assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in swagger
    assert "fonts.googleapis.com" not in (await client.get("/redoc")).text


async def test_pages_carry_one_strict_policy(client: httpx.AsyncClient) -> None:
    for path in PAGES:
        response = await client.get(path)
        assert response.status_code == 200
        (policy,) = response.headers.get_list("content-security-policy")
        directives = _directives(policy)
        assert directives["default-src"] == ["'none'"]
        assert directives["connect-src"] == ["'self'"]
        assert directives["style-src"] == ["'self'", "'unsafe-inline'"]
        assert directives["img-src"] == ["'self'", "data:"]
        assert directives["worker-src"] == ["blob:"]
        assert directives["frame-ancestors"] == directives["base-uri"] == ["'none'"]
        assert directives["form-action"] == ["'none'"]
        # Inline scripts run by their hash, nothing else inline.
        inline = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
        hashes = [
            f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
            for s in inline
        ]
        assert directives["script-src"] == ["'self'", *hashes]
        assert len(hashes) == (0 if path == "/redoc" else 1)
        assert "http" not in policy
        assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(("name", "content_type"), ASSETS.items())
async def test_assets_are_public_typed_and_cached(
    client: httpx.AsyncClient, name: str, content_type: str
) -> None:
    response = await client.get(f"{ASSETS_URL}/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["cache-control"] == CACHE_FOREVER
    assert response.content == (Path(ASSETS_DIR) / name).read_bytes()
    assert "ratelimit" not in response.headers
    assert response.headers["content-security-policy"] == JSON_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    again = await client.get(
        f"{ASSETS_URL}/{name}", headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304
    assert again.headers["cache-control"] == CACHE_FOREVER
    head = await client.head(f"{ASSETS_URL}/{name}")
    assert head.status_code == 200
    assert head.content == b""


async def test_the_asset_path_names_the_package_version(client: httpx.AsyncClient) -> None:
    """Cached for a year: a new fastapi-offline must be a new URL."""
    assert f"/static/docs/{version('fastapi-offline')}" == ASSETS_URL
    for path in (
        f"{ASSETS_URL}/nothing.js",
        f"{ASSETS_URL}/",
        f"{ASSETS_URL}/..%2f..%2f..%2fpyproject.toml",
        "/static/docs/0.0.1/favicon.png",
    ):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert "immutable" not in response.headers.get("cache-control", "")


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_public": "2/minute"}])
async def test_docs_and_assets_are_not_rate_limited(client: httpx.AsyncClient) -> None:
    statuses = [(await client.get("/")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # the public limit is this low
    for _ in range(3):
        for path in (*PAGES, *(f"{ASSETS_URL}/{name}" for name in ASSETS)):
            assert (await client.get(path)).status_code == 200, path


async def test_assets_and_pages_stay_out_of_the_schema_and_label_metrics(
    client: httpx.AsyncClient,
) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc", "/static"))]
    before = (await client.get("/metrics")).text
    await client.get(f"{ASSETS_URL}/favicon.png")
    await client.get(f"{ASSETS_URL}/nothing.png")
    await client.get("/docs")
    after = (await client.get("/metrics")).text
    for labels in (
        {"method": "GET", "route": ASSETS_URL, "status": "200"},
        {"method": "GET", "route": ASSETS_URL, "status": "404"},
        {"method": "GET", "route": "/docs", "status": "200"},
    ):
        assert (
            value(after, "http_requests_total", **labels)
            == value(before, "http_requests_total", **labels) + 1
        ), labels
