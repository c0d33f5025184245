"""`PredictionRoute`: the prediction routes' request handler, without FastAPI's general
per-request machinery.

FastAPI answers every request through one general handler: it builds an endpoint context,
parses the Content-Type with `email.message`, solves the whole dependency tree (each node,
cached or not, with its own parameter analysis), merges a sub-response, and opens two
`AsyncExitStack`s for dependencies with `yield`. The prediction routes need none of that
generality: their one dependency is `admit_prediction`, their body (if declared) is one
JSON model, and nothing yields. This route does for them exactly what FastAPI would, in
the same order and with the same functions, and nothing else:

1. read the body; invalid JSON is FastAPI's own 422 (`json_invalid`), before any token check;
2. the bearer token (`oauth2_scheme`) and `admit_prediction`: 401, 403, 429 or 503;
3. the body validated by FastAPI's `request_body_to_args`: its 422, its error locations;
4. the endpoint, with what its signature asks for.

Everything else stays FastAPI's: the route is declared with `APIRouter.post`, so matching,
405s, the exception handlers and the OpenAPI document (body model, security, responses)
come from the same declaration as before. It leans on FastAPI's `Dependant` and
`request_body_to_args`; FastAPI is pinned, and tests/api/test_direct.py compares every answer
with a plain `APIRoute`'s, so an upgrade that changes either shows there.

`PredictionLane`, the innermost middleware, takes a POST to one of these routes' paths
straight to the route, past FastAPI's exit-stack middleware and the router's scan (in-process,
~7% of a `POST /predict`'s CPU); the app's exception handlers still answer what it raises.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response, status
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_body_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.deps import admit_prediction, oauth2_scheme

Endpoint = Callable[..., Awaitable[Response]]
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _is_json(content_type: str | None) -> bool:
    """FastAPI's rule: `application/json` or `application/*+json`, parameters ignored; a
    body without a Content-Type is not JSON (strict content type)."""
    if not content_type:
        return False
    media_type = content_type.partition(";")[0].strip().lower()
    maintype, _, subtype = media_type.partition("/")
    return maintype == "application" and (subtype == "json" or subtype.endswith("+json"))


async def _body(request: Request) -> Any:
    """The body as FastAPI's handler reads it: decoded JSON, the raw bytes when it is not
    JSON (validation then refuses them), None when empty. Invalid JSON is a 422; any other
    failure to read or decode it (a disconnect, JSON nested too deep) a 400."""
    try:
        raw = await request.body()
        if not raw:
            return None
        if not _is_json(request.headers.get("content-type")):
            return raw
        return _loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ],
            body=exc.doc,
        ) from exc
    except HTTPException:
        raise
    except Exception as exc:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "There was an error parsing the body"
        ) from exc


_DIGITS_AS_NINES = bytes.maketrans(b"0123456789", b"9" * 10)
_LONG_NUMBER = b"9" * 19


def _loads(raw: bytes) -> Any:
    """`json.loads(raw)`, which FastAPI's handler uses, computed by orjson where the two
    agree: a 64-row batch parses in ~11 µs instead of ~40.

    They differ in two ways. orjson refuses some documents json accepts (a UTF-8 BOM, a
    UTF-16 body, a lone surrogate, NaN, 1e400, nesting deeper than 1,024): those, and every
    document orjson refuses, go to json, whose answer or error is the one FastAPI gives. And
    orjson reads an integer beyond 64 bits as a float: a body with 19 digits in a row (where
    such integers start) goes to json too. Floats are parsed to the same double (checked
    on 300,000 numbers of every shape)."""
    if raw.translate(_DIGITS_AS_NINES).find(_LONG_NUMBER) < 0:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


class PredictionRoute(APIRoute):
    """An `APIRoute` for an endpoint whose only dependency is `admit_prediction` (as
    `PredictAccess`), with at most one body model and, optionally, the `Request`.

    Use it as `APIRouter(route_class=...)` or `route_class_override`; any other endpoint
    shape is refused when the route is declared, not when a request comes."""

    def get_route_handler(self) -> Handler:
        return _handler(self.dependant, self.endpoint)

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        handle = self.get_route_handler()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            response = await handle(Request(scope, receive, send))
            await response(scope, receive, send)

        # Instead of FastAPI's `request_response` wrapper: its exit stacks serve dependencies
        # with `yield` (there are none), and its exception handling is the app's own, which
        # still answers whatever the handler raises.
        self.app: ASGIApp = app


def _handler(dependant: Dependant, endpoint: Endpoint) -> Handler:
    admission = _the_admission(dependant)
    body_fields = dependant.body_params
    if len(body_fields) > 1:
        raise TypeError(f"{dependant.path}: a prediction route takes at most one body")
    request_name = dependant.request_param_name
    others = (
        dependant.path_params,
        dependant.query_params,
        dependant.header_params,
        dependant.cookie_params,
        dependant.response_param_name,
        dependant.background_tasks_param_name,
    )
    if any(others):
        raise TypeError(f"{dependant.path}: a prediction route takes no other parameter")

    async def handle(request: Request) -> Response:
        body = await _body(request) if body_fields else None
        token = await oauth2_scheme(request)
        values: dict[str, Any] = {admission: await admit_prediction(request, Response(), token)}
        if body_fields:
            parsed, errors = await request_body_to_args(body_fields, body, embed_body_fields=False)
            if errors:
                raise RequestValidationError(errors, body=body)
            values |= parsed
        if request_name is not None:
            values[request_name] = request
        return await endpoint(**values)

    return handle


def _the_admission(dependant: Dependant) -> str:
    """The name of the endpoint parameter that takes `admit_prediction`'s admission."""
    calls = [(sub.name, sub.call) for sub in dependant.dependencies]
    if len(calls) != 1 or calls[0][1] is not admit_prediction or calls[0][0] is None:
        raise TypeError(f"{dependant.path}: a prediction route depends on PredictAccess only")
    return calls[0][0]


class PredictionLane:
    """ASGI middleware, innermost: a POST to a prediction route's own path goes straight to
    that route, inside Starlette's own `ExceptionMiddleware` with the app's handlers.

    Between the user middleware and a route, every request also passes FastAPI's
    exit-stack middleware (an `AsyncExitStack` per request, for files and `yield`
    dependencies) and the router, which tries the routes in order and updates the scope. A
    prediction route needs neither: its path is fixed, and it has no file to close and no
    dependency with `yield` (`PredictionRoute` refuses one). So the lane looks its path up,
    sets what the router would have set in the scope (`router`, `route`, `endpoint`,
    `path_params`), and lets the app's exception handlers answer what the route raises, as
    the app's own `ExceptionMiddleware` would. Anything else (another method, a trailing
    slash, a mounted root path) takes the usual way. tests/api/test_direct.py compares every
    answer with a plain `APIRoute` twin's, which the router serves.
    """

    def __init__(self, app: ASGIApp, *, routes_of: FastAPI) -> None:
        self.app = app
        self._router = routes_of.router
        # As Starlette splits them: 500 and Exception go to ServerErrorMiddleware, the rest to
        # ExceptionMiddleware. Read when the middleware stack is built, at the first request
        # or lifespan event, once every handler and route is in place.
        handlers = {
            key: handler
            for key, handler in routes_of.exception_handlers.items()
            if key not in (500, Exception)
        }
        self._lanes = {
            route.path: (route, ExceptionMiddleware(route.app, handlers, debug=routes_of.debug))
            for route in routes_of.router.routes
            if isinstance(route, PredictionRoute)
            and route.methods == {"POST"}
            and not route.param_convertors
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            lane = self._lanes.get(scope["path"])
            if lane is not None:
                route, handled = lane
                scope.setdefault("router", self._router)
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = {}
                await handled(scope, receive, send)
                return
        await self.app(scope, receive, send)
