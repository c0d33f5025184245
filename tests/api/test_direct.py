"""`PredictionRoute` answers exactly as FastAPI's own route would.

Each prediction route gets a twin on the same app, declared with FastAPI's `APIRoute` and the
same endpoint: every request below goes to both, and the answers must be equal (status,
body, the headers a client acts on), and so must their OpenAPI operations.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from service.api.deps import CurrentUser, PredictAccess
from service.api.direct import PredictionRoute, _loads
from service.api.routes.v2 import HEADER_LENGTH
from tests.support.auth import bearer, create_user, login

SETOSA = [5.1, 3.5, 1.4, 0.2]
ROUTES = ["/predict", "/predict/batch", "/v2/models/iris-rf/infer"]
JSON = {"content-type": "application/json"}

BODIES: list[tuple[str, bytes, dict[str, str]]] = [
    ("valid", b'{"data": [5.1, 3.5, 1.4, 0.2]}', JSON),
    ("valid batch", b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}', JSON),
    ("invalid JSON", b'{"data": [5.1, 3.5,', JSON),
    ("JSON nested too deep", b"[" * 100_000 + b"]" * 100_000, JSON),
    ("NaN", b'{"data": [NaN, 3.5, 1.4, 0.2]}', JSON),
    ("wrong field", b'{"rows": [5.1, 3.5, 1.4, 0.2]}', JSON),
    ("extra field", b'{"data": [5.1, 3.5, 1.4, 0.2], "x": 1}', JSON),
    ("a list", b"[5.1, 3.5, 1.4, 0.2]", JSON),
    ("empty", b"", JSON),
    (
        "JSON with parameters",
        b'{"data": [5.1, 3.5, 1.4, 0.2]}',
        {"content-type": "application/json; charset=utf-8"},
    ),
    (
        "vendor +json",
        b'{"data": [5.1, 3.5, 1.4, 0.2]}',
        {"content-type": "Application/Vnd.Iris+JSON"},
    ),
    ("text/plain", b'{"data": [5.1, 3.5, 1.4, 0.2]}', {"content-type": "text/plain"}),
    ("no Content-Type", b'{"data": [5.1, 3.5, 1.4, 0.2]}', {}),
    ("garbage Content-Type", b'{"data": [5.1, 3.5, 1.4, 0.2]}', {"content-type": "json"}),
    ("binary", bytes(range(256)), {"content-type": "application/octet-stream"}),
    (
        "V2 JSON",
        b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",'
        b' "data": [5.1, 3.5, 1.4, 0.2]}]}',
        {},
    ),
    # Where orjson (the fast parse) and json (FastAPI's) could part: the answers must not.
    ("an integer beyond 64 bits", b'{"data": [18446744073709551616, 3.5, 1.4, 0.2]}', JSON),
    ("an integer below -2**63", b'{"data": [-9223372036854775809, 3.5, 1.4, 0.2]}', JSON),
    ("20 significant digits", b'{"data": [5.1000000000000000001, 3.5, 1.4, 0.2]}', JSON),
    ("a float beyond float64", b'{"data": [1e400, 3.5, 1.4, 0.2]}', JSON),
    ("a UTF-8 BOM", b'\xef\xbb\xbf{"data": [5.1, 3.5, 1.4, 0.2]}', JSON),
    ("a lone surrogate", b'{"data": [5.1, 3.5, 1.4, 0.2], "x": "\\ud800"}', JSON),
    ("UTF-16", '{"data": [5.1, 3.5, 1.4, 0.2]}'.encode("utf-16"), JSON),
    (
        "V2 binary header too long",
        b'{"inputs": []}',
        {HEADER_LENGTH: "999"},
    ),
]
KEPT_HEADERS = ("www-authenticate", "retry-after", "allow", "content-type")


def _twin(path: str) -> str:
    """Where a route's FastAPI twin is; a V2 twin stays under /v2 (errors are {"error"})."""
    if path.startswith("/v2/"):
        return "/v2/twin/" + path.removeprefix("/v2/")
    return "/twin" + path


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"rate_limit_predict": "100000/minute"}


@pytest.fixture
def twinned(app: FastAPI) -> FastAPI:
    prediction_routes = [r for r in app.router.routes if isinstance(r, PredictionRoute)]
    assert {r.path for r in prediction_routes} >= set(ROUTES)
    for route in prediction_routes:
        app.router.add_api_route(
            _twin(route.path),
            route.endpoint,
            methods=sorted(route.methods),
            response_model=route.response_model,
            responses=route.responses,
            openapi_extra=route.openapi_extra,
            tags=route.tags,
            summary=route.summary,
            route_class_override=APIRoute,
        )
    app.openapi_schema = None
    return app


def _answer(response: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    return response.status_code, response.content, headers


@pytest.fixture
async def callers(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> dict[str, dict[str, str]]:
    await create_user(client, admin_headers, "viewer", scopes=[])
    viewer = await login(client, "viewer", "user-password-for-tests")
    return {
        "no token": {},
        "not a bearer token": {"Authorization": "Basic dXNlcjpwYXNz"},
        "a forged token": bearer("e30.e30.e30"),
        "without the predict scope": bearer(viewer["access_token"]),
        "allowed": user_headers,
    }


@pytest.mark.parametrize("route", ROUTES)
async def test_every_answer_equals_fastapis_route(
    twinned: FastAPI, client: httpx.AsyncClient, callers: dict[str, dict[str, str]], route: str
) -> None:
    seen_statuses = set()
    for caller, auth in callers.items():
        for name, body, headers in BODIES:
            ours = await client.post(route, content=body, headers=auth | headers)
            theirs = await client.post(_twin(route), content=body, headers=auth | headers)
            assert _answer(ours) == _answer(theirs), f"{caller}, {name}"
            seen_statuses.add(ours.status_code)
    # Every outcome was reached: an answer, a malformed body, no token, a missing scope.
    assert {200, 401, 403} <= seen_statuses
    assert seen_statuses & {400, 422}


async def test_the_openapi_operations_are_fastapis(twinned: FastAPI) -> None:
    paths = twinned.openapi()["paths"]
    prediction_routes = [r for r in twinned.routes if isinstance(r, PredictionRoute)]
    for route in prediction_routes:
        ours, theirs = paths[route.path]["post"], paths[_twin(route.path)]["post"]
        del ours["operationId"], theirs["operationId"]
        assert ours == theirs
        assert ours["security"] == [{"OAuth2PasswordBearer": []}]


class _Body(BaseModel):
    data: list[float]


async def _another_dependency() -> None:
    return None


async def _takes_a_user(_: CurrentUser) -> Response:
    return Response()


async def _takes_a_query(admitted: PredictAccess, limit: int) -> Response:
    return Response()


async def _takes_the_response(admitted: PredictAccess, response: Response) -> Response:
    return response


async def _takes_two_bodies(admitted: PredictAccess, first: _Body, second: _Body) -> Response:
    return Response()


async def _takes_more(
    admitted: PredictAccess, _: Annotated[None, Depends(_another_dependency)]
) -> Response:
    return Response()


@pytest.mark.parametrize(
    "endpoint", [_takes_a_user, _takes_a_query, _takes_the_response, _takes_two_bodies, _takes_more]
)
def test_an_endpoint_it_cannot_serve_is_refused_when_declared(endpoint: Any) -> None:
    router = APIRouter(route_class=PredictionRoute)
    with pytest.raises(TypeError, match="a prediction route"):
        router.add_api_route("/x", endpoint, methods=["POST"])


@pytest.fixture
def routed(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests that reached the router (the lane's are not among them)."""
    paths: list[str] = []
    dispatch = app.router.middleware_stack

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        paths.append(scope["path"])
        await dispatch(scope, receive, send)

    monkeypatch.setattr(app.router, "middleware_stack", counting)
    return paths


async def test_prediction_requests_take_the_lane_and_nothing_else_does(
    client: httpx.AsyncClient, user_headers: dict[str, str], routed: list[str]
) -> None:
    v2 = (
        b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",'
        b' "data": [5.1, 3.5, 1.4, 0.2]}]}'
    )
    bodies = {"/predict": b'{"data": [5.1, 3.5, 1.4, 0.2]}', "/predict/batch": b'{"instances": []}'}
    for route in ROUTES:
        body = bodies.get(route, v2)
        answered = await client.post(route, content=body, headers=user_headers | JSON)
        refused = await client.post(route, content=body, headers=JSON)  # no token: 401
        assert answered.status_code in (200, 422), answered.text
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert routed == []

    # Another method, a trailing slash, another route: the router's, as before.
    assert (await client.get("/predict", headers=user_headers)).status_code == 405
    assert (await client.post("/predict/", headers=user_headers)).status_code in (307, 404)
    assert (await client.get("/healthz")).status_code == 200
    assert routed == ["/predict", "/predict/", "/healthz"]


DOCUMENTS = [body for _, body, _ in BODIES] + [
    b"12345678901234567890",
    b"-0",
    b"[1e-400, -0.0, 0.1, 1.7976931348623157e308, 5e-324]",
    b'{"a": 1, "a": 2}',
    b'"\\u0000\x7f"',
    b"[" * 1500 + b"]" * 1500,
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_fast_parse_gives_what_json_gives(document: bytes) -> None:
    """`_loads` (orjson where it agrees) against `json.loads`, FastAPI's parser: the same
    value with the same types, or the same error."""
    try:
        expected: Any = json.loads(document)
    except Exception as exc:  # whichever error json raises
        with pytest.raises(type(exc)):
            _loads(document)
        return
    got = _loads(document)
    assert got == expected or (got != got and expected != expected)
    assert repr(got) == repr(expected)  # types too: 1 is not 1.0, -0.0 is not 0.0
