"""Root, liveness, readiness and the OpenAPI document."""

from __future__ import annotations

import httpx
from fastapi import FastAPI


async def test_root(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.json()["docs"] == "/docs"
    assert "message" in response.json()


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"model": "ok", "redis": "ok", "redis_memory": "ok"}


async def test_openapi_documents_the_routes(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    for path in ("/token", "/token/refresh", "/logout", "/predict", "/predict/batch", "/model"):
        assert path in schema["paths"], path
    predict_body = schema["components"]["schemas"]["PredictRequest"]
    assert predict_body["examples"] == [{"data": [5.1, 3.5, 1.4, 0.2]}]


async def test_unknown_route_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


async def test_wrong_method_is_405(client: httpx.AsyncClient) -> None:
    assert (await client.get("/predict")).status_code == 405


async def test_app_state_is_built_per_app(app: FastAPI) -> None:
    assert app.state.runtime.predictor.manifest.version.startswith("iris-rf-")


async def test_405_allow_names_every_method_of_the_resource(client: httpx.AsyncClient) -> None:
    users = await client.request("PUT", "/users")
    assert users.status_code == 405
    assert users.headers["allow"] == "GET, POST"
    one_user = await client.request("PUT", "/users/alice")
    assert one_user.headers["allow"] == "DELETE, PATCH"
    me = await client.request("PUT", "/users/me")
    assert me.headers["allow"] == "GET"


async def test_swagger_ui_keeps_tokens_out_of_local_storage(client: httpx.AsyncClient) -> None:
    """Finding 7: Swagger UI persisted bearer tokens in localStorage."""
    page = (await client.get("/docs")).text
    assert '"persistAuthorization": false' in page
