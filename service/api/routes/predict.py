"""Predictions and model metadata.

Responses are serialised once with orjson and returned as bytes: the declared
`response_model` still documents them in OpenAPI, without a second validation pass.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Response, status
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from service.api.deps import CurrentUser, PredictUser, ServicesDep, SettingsDep
from service.api.schemas import (
    BatchPredictRequest,
    BatchPredictResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
)
from service.core.metrics import record_inference
from service.ml.inference import Predictor

router = APIRouter(tags=["model"])

_LIMITED: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, invalid, expired or revoked token"},
    403: {"description": "Token lacks the predict scope"},
    429: {"description": "Per-user rate limit reached (see Retry-After)"},
}


def _predictions(predictor: Predictor, rows: list[list[float]]) -> list[dict[str, object]]:
    probabilities = predictor.predict_proba(np.asarray(rows, dtype=np.float64))
    labels = predictor.class_names
    winners = probabilities.argmax(axis=1).tolist()
    return [
        {
            "prediction": winner,
            "label": labels[winner],
            "probabilities": dict(zip(labels, row, strict=True)),
        }
        for winner, row in zip(winners, probabilities.tolist(), strict=True)
    ]


async def _infer(services: ServicesDep, rows: list[list[float]]) -> list[dict[str, object]]:
    """Small inputs run inline (tens of microseconds, less than a thread hand-off costs);
    larger batches go to the thread pool so the event loop never waits on them."""
    start = time.perf_counter()
    if len(rows) <= services.settings.inline_inference_rows:
        results = _predictions(services.predictor, rows)
    else:
        results = await run_in_threadpool(_predictions, services.predictor, rows)
    record_inference((str(r["label"]) for r in results), len(rows), time.perf_counter() - start)
    return results


def _json(payload: dict[str, object]) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


@router.post("/predict", response_model=PredictResponse, responses=_LIMITED)
async def predict(body: PredictRequest, _: PredictUser, services: ServicesDep) -> Response:
    (result,) = await _infer(services, [body.data])
    result["model_version"] = services.predictor.manifest.version
    return _json(result)


@router.post("/predict/batch", response_model=BatchPredictResponse, responses=_LIMITED)
async def predict_batch(
    body: BatchPredictRequest, _: PredictUser, services: ServicesDep, settings: SettingsDep
) -> Response:
    limit = settings.max_batch_size
    if len(body.instances) > limit:
        raise RequestValidationError(
            [
                {
                    "type": "too_long",
                    "loc": ("body", "instances"),
                    "msg": f"List should have at most {limit} items (MAX_BATCH_SIZE)",
                }
            ]
        )
    predictions = await _infer(services, body.instances)
    version = services.predictor.manifest.version
    return _json({"predictions": predictions, "model_version": version})


@router.get("/model", response_model=ModelInfo, status_code=status.HTTP_200_OK)
async def model_info(_: CurrentUser, services: ServicesDep) -> Response:
    return _json(services.predictor.manifest.model_dump(mode="json"))
