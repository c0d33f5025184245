"""The Open Inference Protocol (KServe V2, REST) for the served model, so V2 clients
(tritonclient, KServe's and MLServer's) call it unchanged.

Same authentication and limits as /predict: server metadata, health and model readiness
are public and never counted (probes call them); model metadata needs a valid token; infer
needs the `predict` scope and counts against the caller's PREDICT quota, the one /predict
and /predict/batch use. Infer takes the same path as /predict (`predict_rows`: the same
predictor, inline/thread-pool rule and metrics) and the same body limit; its body is read
raw (tritonclient sends no Content-Type, and binary tensor data by default), parsed once
with orjson and answered with orjson.

Errors here are `{"error": "..."}` (service/infra/errors.py), with 400 for a bad request.
An unknown model name or version is a 404 before the token is even checked, so it is never
counted. Bodies and shapes come from the manifest: input [-1, features], outputs `label`
(INT64 [-1], the index into the class names) and `probabilities` (FP64 [-1, classes]).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel

from service.api.deps import CurrentUser, PredictAccess, RuntimeDep
from service.api.direct import PredictionRoute
from service.api.routes.predict import predict_rows
from service.api.schemas import example_row
from service.api.v2_schemas import (
    LABEL,
    PROBABILITIES,
    InferDecoder,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
    TensorError,
    V2Error,
    infer_example,
    model_metadata,
)
from service.infra.errors import OPEN_INFERENCE_PREFIX
from service.ml.manifest import ModelManifest
from service.runtime import Runtime

HEADER_LENGTH = "inference-header-content-length"

_DESCRIPTIONS = {
    400: "Bad tensor (shape, datatype, element count, NaN/Infinity, out of bounds, unknown "
    "output) or malformed body",
    401: "Missing, invalid or expired token (WWW-Authenticate)",
    403: "The token lacks the 'predict' scope",
    413: "Body over MAX_BODY_BYTES (refused before it is parsed)",
    429: "Rate limited (the PREDICT quota /predict shares): see Retry-After",
    503: "Redis unreachable: retry after Retry-After",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": V2Error, "description": _DESCRIPTIONS[s]} for s in statuses}


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def build_router(manifest: ModelManifest) -> APIRouter:
    """The V2 routes for the model `manifest` describes.

    The model's paths are literal (`/v2/models/iris-rf/infer`), so infer depends on exactly
    what /predict depends on, and an unknown model or version matches only the templated
    fallbacks added last: a 404 before any token check, never counted. Infer comes first:
    the router tries routes in order."""
    router = APIRouter(prefix=OPEN_INFERENCE_PREFIX, tags=["open inference protocol (v2)"])
    model = f"/models/{manifest.name}"
    version = f"{model}/versions/{manifest.version}"
    decoder = InferDecoder(manifest)
    metadata = orjson.dumps(model_metadata(manifest).model_dump(exclude_none=True))
    ready = orjson.dumps(ModelReady(name=manifest.name, ready=True).model_dump())

    async def infer(request: Request, runtime: Runtime) -> Response:
        body = await request.body()
        try:
            decoded = decoder.decode(
                body, request.headers.get(HEADER_LENGTH), runtime.settings.max_batch_size
            )
        except TensorError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        probabilities, winners = await predict_rows(runtime, decoded.rows)
        outputs: list[dict[str, object]] = []
        for output in decoded.outputs:
            if output == LABEL:
                outputs.append(
                    {"name": LABEL, "datatype": "INT64", "shape": [len(winners)], "data": winners}
                )
            else:
                outputs.append(
                    {
                        "name": PROBABILITIES,
                        "datatype": "FP64",
                        "shape": list(probabilities.shape),
                        "data": probabilities.ravel(),
                    }
                )
        payload: dict[str, object] = {
            "model_name": manifest.name,
            "model_version": manifest.version,
            "outputs": outputs,
        }
        if decoded.id is not None:
            payload["id"] = decoded.id
        return _json(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))

    body_doc = {
        "requestBody": {
            "required": True,
            "description": (
                "JSON, or (binary tensor extension, tritonclient's default) a JSON header of "
                "`Inference-Header-Content-Length` bytes followed by each input's raw "
                "little-endian bytes (`parameters.binary_data_size`); any Content-Type. "
                f"One input [N, {manifest.n_features}] FP32 or FP64, N from 1 to "
                "MAX_BATCH_SIZE. Outputs are always JSON."
            ),
            "content": {
                "application/json": {
                    "schema": _inline_schema(InferenceRequest),
                    "example": infer_example(manifest, example_row(manifest)),
                }
            },
        }
    }
    infer_errors = _errors(400, 401, 403, 413, 429, 503)

    infer_routes = APIRouter(route_class=PredictionRoute)

    @infer_routes.post(
        f"{model}/infer",
        response_model=InferenceResponse,
        summary="Infer",
        responses=infer_errors,
        openapi_extra=body_doc,
    )
    async def v2_infer(request: Request, admitted: PredictAccess) -> Response:
        return await infer(request, admitted.runtime)

    @infer_routes.post(
        f"{version}/infer",
        response_model=InferenceResponse,
        summary="Infer (this version)",
        responses=infer_errors,
        openapi_extra=body_doc,
    )
    async def v2_version_infer(request: Request, admitted: PredictAccess) -> Response:
        return await infer(request, admitted.runtime)

    router.include_router(infer_routes)

    @router.get("", response_model=ServerMetadata, summary="Server metadata")
    async def v2_server_metadata(request: Request) -> Response:
        """The server's name and version; no protocol extension is claimed (binary input
        data is accepted, outputs are always JSON)."""
        app = request.app
        return _json(orjson.dumps({"name": app.title, "version": app.version, "extensions": []}))

    @router.get("/health/live", response_model=ServerLive, summary="Server live")
    async def v2_live() -> Response:
        """The process answers (never touches Redis), like /healthz."""
        return _json(b'{"live":true}')

    @router.get(
        "/health/ready", response_model=ServerReady, summary="Server ready", responses=_errors(503)
    )
    async def v2_ready(runtime: RuntimeDep) -> Response:
        """Ready to infer: Redis, which every authenticated request needs, answers (/readyz)."""
        if await runtime.storage_memory() is None:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "not ready: redis unreachable",
                headers={"Retry-After": "1"},
            )
        return _json(b'{"ready":true}')

    for path, summary in ((model, "Model metadata"), (version, "Model metadata (this version)")):

        @router.get(
            path, response_model=ModelMetadata, summary=summary, responses=_errors(401, 503)
        )
        async def v2_model_metadata(_: CurrentUser) -> Response:
            return _json(metadata)

    for path, summary in ((model, "Model ready"), (version, "Model ready (this version)")):

        @router.get(f"{path}/ready", response_model=ModelReady, summary=summary)
        async def v2_model_ready() -> Response:
            """The model is loaded before the server answers anything: served means ready."""
            return _json(ready)

    async def unknown_model() -> Response:
        # The name asked for is not repeated: no answer echoes what was sent.
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"unknown model or version: this server serves {manifest.name} "
            f"version {manifest.version}",
        )

    # Any other model or version: the same methods as above, so a wrong method on the served
    # model's paths stays a 405.
    for template, method in (
        ("/models/{model_name}/infer", "POST"),
        ("/models/{model_name}/versions/{model_version}/infer", "POST"),
        ("/models/{model_name}", "GET"),
        ("/models/{model_name}/versions/{model_version}", "GET"),
        ("/models/{model_name}/ready", "GET"),
        ("/models/{model_name}/versions/{model_version}/ready", "GET"),
    ):
        router.add_api_route(template, unknown_model, methods=[method], include_in_schema=False)
    return router


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its definitions inlined: the body is documented through
    `openapi_extra` (it is read raw), so nothing adds them to the components."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined
