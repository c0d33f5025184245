"""Bring your own model: classifiers fitted on another dataset that ships with scikit-learn
(wine: 13 features, 3 cultivars), packaged with `service.ml.package` and served by the
in-process app (MODEL_DIR pointing at the artifact) through /predict, /predict/batch and V2,
answer what scikit-learn's own predict_proba answers.

Two models: an ExtraTreesClassifier (the exact numpy fast path) and a scaled logistic
regression (scikit-learn itself, in the thread pool).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from fastapi import FastAPI
from sklearn.datasets import load_wine
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from service.api.schemas import ModelInfo
from service.ml.manifest import MODEL_FILE
from service.ml.package import package, spec_from_arguments
from service.ml.predictor import ForestPredictor, SklearnPredictor

WINE = load_wine()
X: np.ndarray[Any, Any] = WINE.data
CULTIVARS = ["barolo", "grignolino", "barbera"]
ESTIMATORS: dict[str, tuple[Callable[[], Any], type[object]]] = {
    "wine-et": (lambda: ExtraTreesClassifier(n_estimators=80, random_state=0), ForestPredictor),
    "wine-lr": (
        lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        SklearnPredictor,
    ),
}
# Generous bounds per feature (twice the largest value seen), so every wine row is inside.
BOUNDS = [
    f"{name}=0:{2 * high:g}" for name, high in zip(WINE.feature_names, X.max(axis=0), strict=True)
]


@pytest.fixture(scope="module", params=sorted(ESTIMATORS))
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Replaces the suite's Iris artifact for this module: the app serves this one."""
    name: str = request.param
    build, _ = ESTIMATORS[name]
    root = tmp_path_factory.mktemp(name)
    joblib.dump(build().fit(X, WINE.target), root / "fitted.joblib")
    spec = spec_from_arguments(
        name=name,
        features=",".join(WINE.feature_names),
        classes=",".join(CULTIVARS),
        bounds=BOUNDS,
        example=None,
    )
    return package(root / "fitted.joblib", spec, root / "artifact").out_dir


@pytest.fixture
def estimator(model_dir: Path) -> Any:
    return joblib.load(model_dir / MODEL_FILE)


def _probabilities(predictions: list[dict[str, Any]]) -> np.ndarray[Any, Any]:
    return np.array([[p["probabilities"][c] for c in CULTIVARS] for p in predictions])


async def test_the_app_serves_the_packaged_model(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str], model_dir: Path
) -> None:
    manifest = app.state.predictor.manifest
    kind = ESTIMATORS[manifest.name][1]
    assert type(app.state.predictor) is kind
    info = (await client.get("/model", headers=user_headers)).json()
    assert info["name"] == manifest.name
    assert info["feature_names"] == list(WINE.feature_names)
    assert info["class_names"] == CULTIVARS
    assert info["metrics"] is None
    assert info["packaged_at"]
    ModelInfo.model_validate(info)  # what the OpenAPI schema documents
    schema = (await client.get("/openapi.json")).json()["components"]["schemas"]
    data = schema["PredictRequest"]["properties"]["data"]
    assert data["minItems"] == data["maxItems"] == 13


async def test_predict_and_batch_equal_sklearn(
    client: httpx.AsyncClient, user_headers: dict[str, str], estimator: Any
) -> None:
    response = await client.post(
        "/predict/batch", json={"instances": X.tolist()}, headers=user_headers
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = estimator.predict_proba(X)
    np.testing.assert_array_equal(_probabilities(predictions), expected)
    assert [p["prediction"] for p in predictions] == expected.argmax(axis=1).tolist()
    assert [p["label"] for p in predictions] == [CULTIVARS[i] for i in expected.argmax(axis=1)]
    for row in X[::25]:
        single = await client.post("/predict", json={"data": row.tolist()}, headers=user_headers)
        assert single.status_code == 200, single.text
        got = _probabilities([single.json()])
        np.testing.assert_array_equal(got, estimator.predict_proba(row[None, :]))


async def test_v2_equals_sklearn(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str], estimator: Any
) -> None:
    name = app.state.predictor.manifest.name
    metadata = (await client.get(f"/v2/models/{name}", headers=user_headers)).json()
    assert metadata["inputs"][0]["shape"] == [-1, 13]
    assert metadata["outputs"][1]["shape"] == [-1, 3]
    infer = f"/v2/models/{name}/infer"
    rows = X[:150]  # within MAX_BATCH_SIZE (256)
    body = {
        "inputs": [{"name": "wine", "shape": [150, 13], "datatype": "FP64", "data": rows.tolist()}]
    }
    response = await client.post(infer, json=body, headers=user_headers)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    expected = estimator.predict_proba(rows)
    np.testing.assert_array_equal(np.reshape(outputs["probabilities"]["data"], (150, 3)), expected)
    assert outputs["label"]["data"] == expected.argmax(axis=1).tolist()
    # Binary FP32, as tritonclient sends it: the model sees the float32 values.
    raw = X.astype("<f4")[150:]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "wine",
                    "shape": list(raw.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": raw.nbytes},
                }
            ]
        }
    ).encode()
    response = await client.post(
        infer,
        content=header + raw.tobytes(),
        headers=user_headers | {"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    expected = estimator.predict_proba(raw.astype(np.float64))
    np.testing.assert_array_equal(
        np.reshape(outputs["probabilities"]["data"], expected.shape), expected
    )


async def test_the_manifest_bounds_hold_on_every_route(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    row = X[0].tolist()
    row[12] = 2 * X[:, 12].max() + 1  # proline, beyond its bound
    response = await client.post("/predict", json={"data": row}, headers=user_headers)
    assert response.status_code == 422, response.text
    name = app.state.predictor.manifest.name
    body = {"inputs": [{"name": "wine", "shape": [1, 13], "datatype": "FP64", "data": row}]}
    response = await client.post(f"/v2/models/{name}/infer", json=body, headers=user_headers)
    assert response.status_code == 400
    assert "proline must be between 0 and 3360" in response.json()["error"]
    iris_shaped = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]
    }
    response = await client.post(f"/v2/models/{name}/infer", json=iris_shaped, headers=user_headers)
    assert response.json() == {"error": "inputs.0.shape: this model takes [N, 13]"}
