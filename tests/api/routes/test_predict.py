"""Prediction routes: response shapes, equality with scikit-learn, and strict input rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris

from service.ml.manifest import MODEL_FILE

IRIS_SETOSA = [5.1, 3.5, 1.4, 0.2]


async def test_predict_setosa(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    response = await client.post("/predict", json={"data": IRIS_SETOSA}, headers=user_headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prediction"] == 0
    assert body["label"] == "setosa"
    assert set(body["probabilities"]) == {"setosa", "versicolor", "virginica"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert body["model_version"].startswith("iris-rf-")


async def test_served_probabilities_equal_sklearn_on_all_iris_rows(
    model_dir: Path, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    rows = load_iris().data.tolist()
    response = await client.post("/predict/batch", json={"instances": rows}, headers=user_headers)
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    estimator = joblib.load(model_dir / MODEL_FILE)
    expected = estimator.predict_proba(np.asarray(rows))
    classes = ["setosa", "versicolor", "virginica"]
    got = np.array([[p["probabilities"][c] for c in classes] for p in served])
    assert np.max(np.abs(got - expected)) <= 1e-12
    assert [p["prediction"] for p in served] == expected.argmax(axis=1).tolist()
    assert all(p["label"] == classes[p["prediction"]] for p in served)


async def test_batches_repeating_rows_in_any_order_equal_sklearn(
    model_dir: Path, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    """The batch route serves the answers of rows it has seen from kept bytes
    (`AnswerCache`): later batches mixing seen rows, in another order, with unseen ones
    still get each row's own answer, and /predict agrees with the batch on every row."""
    iris = load_iris().data
    estimator = joblib.load(model_dir / MODEL_FILE)
    order = np.random.default_rng(7).permutation(len(iris))
    batches = [order[:60], order[30:90], order[::-1][:64], order[:60]]
    for indices in batches:
        rows = iris[indices].tolist()
        response = await client.post(
            "/predict/batch", json={"instances": rows}, headers=user_headers
        )
        assert response.status_code == 200, response.text
        served = response.json()["predictions"]
        expected = estimator.predict_proba(np.asarray(rows))
        got = [list(answer["probabilities"].values()) for answer in served]
        np.testing.assert_array_equal(np.asarray(got), expected)
        assert [answer["prediction"] for answer in served] == expected.argmax(axis=1).tolist()
    for row, answer in zip(rows[:5], served[:5], strict=True):
        single = await client.post("/predict", json={"data": row}, headers=user_headers)
        assert single.json() | {"model_version": None} == answer | {"model_version": None}


async def test_concurrent_predictions_each_get_their_own_row_s_answer(
    model_dir: Path, client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    """Concurrent requests share forest calls (`CoalescedInference`); none may get another
    request's answer, whatever mix of /predict, batch and V2 shares a call."""
    rows = load_iris().data.tolist()[::3]
    expected = joblib.load(model_dir / MODEL_FILE).predict_proba(np.asarray(rows))

    async def one(index: int) -> list[float]:
        if index % 5 == 4:
            body = {"instances": [rows[index]]}
            response = await client.post("/predict/batch", json=body, headers=user_headers)
            assert response.status_code == 200, response.text
            return list(response.json()["predictions"][0]["probabilities"].values())
        response = await client.post("/predict", json={"data": rows[index]}, headers=user_headers)
        assert response.status_code == 200, response.text
        return list(response.json()["probabilities"].values())

    served = await asyncio.gather(*(one(i) for i in range(len(rows))))
    np.testing.assert_array_equal(np.asarray(served), expected)


async def test_batch_shape(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    body = {"instances": [IRIS_SETOSA, [6.7, 3.0, 5.2, 2.3]]}
    response = await client.post("/predict/batch", json=body, headers=user_headers)
    assert response.status_code == 200
    payload = response.json()
    assert [p["label"] for p in payload["predictions"]] == ["setosa", "virginica"]
    assert payload["model_version"].startswith("iris-rf-")


async def test_large_batch_runs_off_the_event_loop(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    rows = [IRIS_SETOSA] * 200
    response = await client.post("/predict/batch", json={"instances": rows}, headers=user_headers)
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 200


INVALID_ROWS: list[tuple[str, Any]] = [
    ("three numbers", [5.1, 3.5, 1.4]),
    ("five numbers", [5.1, 3.5, 1.4, 0.2, 1.0]),
    ("empty", []),
    ("string number", ["5.1", 3.5, 1.4, 0.2]),
    ("boolean", [True, 3.5, 1.4, 0.2]),
    ("null", [None, 3.5, 1.4, 0.2]),
    ("negative", [-0.1, 3.5, 1.4, 0.2]),
    ("above range", [100.5, 3.5, 1.4, 0.2]),
    ("nested list", [[5.1], 3.5, 1.4, 0.2]),
    ("object", [{"x": 1}, 3.5, 1.4, 0.2]),
    ("not a list", "5.1,3.5,1.4,0.2"),
    ("dict", {"a": 1}),
    ("number", 5.1),
    ("null data", None),
]


@pytest.mark.parametrize(("case", "data"), INVALID_ROWS, ids=[c for c, _ in INVALID_ROWS])
async def test_invalid_rows_are_422(
    client: httpx.AsyncClient, user_headers: dict[str, str], case: str, data: Any
) -> None:
    response = await client.post("/predict", json={"data": data}, headers=user_headers)
    assert response.status_code == 422, (case, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, list)
    assert all("input" not in error for error in detail)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_non_finite_json_tokens_are_422(
    client: httpx.AsyncClient, user_headers: dict[str, str], token: str
) -> None:
    raw = '{"data": [' + token + ", 3.5, 1.4, 0.2]}"
    headers = user_headers | {"Content-Type": "application/json"}
    response = await client.post("/predict", content=raw, headers=headers)
    assert response.status_code == 422, response.text


async def test_boundaries_are_accepted(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    for row in ([0, 0, 0, 0], [100, 100, 100, 100], [5, 3, 1, 0]):
        response = await client.post("/predict", json={"data": row}, headers=user_headers)
        assert response.status_code == 200, row


@pytest.mark.parametrize(
    "body",
    [
        {"data": IRIS_SETOSA, "extra": 1},
        {},
        {"instances": [IRIS_SETOSA]},
        [IRIS_SETOSA],
    ],
)
async def test_wrong_body_shape_is_422(
    client: httpx.AsyncClient, user_headers: dict[str, str], body: Any
) -> None:
    response = await client.post("/predict", json=body, headers=user_headers)
    assert response.status_code == 422


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b"\xff\xfe", b'{"data": [1,2,3,4]}{}', b"[" * 5000 + b"]" * 5000],
)
async def test_malformed_json_is_4xx(
    client: httpx.AsyncClient, user_headers: dict[str, str], raw: bytes
) -> None:
    headers = user_headers | {"Content-Type": "application/json"}
    response = await client.post("/predict", content=raw, headers=headers)
    assert 400 <= response.status_code < 500, response.text


async def test_batch_limits(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    empty = await client.post("/predict/batch", json={"instances": []}, headers=user_headers)
    assert empty.status_code == 422
    too_many = {"instances": [IRIS_SETOSA] * 257}
    response = await client.post("/predict/batch", json=too_many, headers=user_headers)
    assert response.status_code == 422
    assert "MAX_BATCH_SIZE" in response.text
    bad_row = {"instances": [IRIS_SETOSA, [1, 2, 3]]}
    response = await client.post("/predict/batch", json=bad_row, headers=user_headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "instances", 1]


async def test_body_over_limit_is_413_before_parsing(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    raw = b'{"instances": [' + b"[1,2,3,4]," * 10000 + b"[1,2,3,4]]}"
    headers = user_headers | {"Content-Type": "application/json"}
    response = await client.post("/predict/batch", content=raw, headers=headers)
    assert response.status_code == 413
    assert "too large" in response.json()["detail"]


async def test_chunked_body_over_limit_is_413(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"instances": ['
        for _ in range(10000):
            yield b"[1,2,3,4],"
        yield b"[1,2,3,4]]}"

    headers = user_headers | {"Content-Type": "application/json"}
    response = await client.post("/predict/batch", content=chunks(), headers=headers)
    assert response.status_code == 413


async def test_model_metadata(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    response = await client.get("/model", headers=user_headers)
    assert response.status_code == 200
    info = response.json()
    assert info["version"].startswith("iris-rf-")
    assert len(info["sha256"]) == 64
    assert info["feature_names"] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert info["class_names"] == ["setosa", "versicolor", "virginica"]
    assert info["metrics"]["accuracy"] >= 0.9
    for key in ("sklearn_version", "numpy_version", "joblib_version", "trained_at"):
        assert key in info
