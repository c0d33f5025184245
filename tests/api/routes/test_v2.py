"""The Open Inference Protocol (V2) routes in-process: answers equal /predict's, binary and
JSON tensors, every error `{"error": ...}` with the right status, and one quota with /predict.

Over real HTTP with tritonclient: tests/serving/test_v2_tritonclient.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris

from service.auth.tokens import TokenService
from service.main import create_app
from service.rules.scopes import Scope
from tests.support.auth import bearer, create_user, login
from tests.support.processes import free_port
from tests.support.prom import value
from tests.support.settings import USER_PASSWORD, make_settings

MODEL = "iris-rf"
INFER = f"/v2/models/{MODEL}/infer"
IRIS = load_iris().data
SETOSA = [5.1, 3.5, 1.4, 0.2]
CLASSES = ["setosa", "versicolor", "virginica"]


def tensor(data: Any, shape: list[Any], datatype: str = "FP64", **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input-0", "shape": shape, "datatype": datatype, "data": data}]
    } | extra


def binary_body(
    rows: np.ndarray[Any, Any], datatype: str = "FP32", **extra: Any
) -> tuple[bytes, dict[str, str]]:
    """What tritonclient sends by default: a JSON header, then the raw little-endian bytes."""
    raw = rows.astype("<f4" if datatype == "FP32" else "<f8").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": list(rows.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
        | extra
    ).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def outputs(response: httpx.Response) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == MODEL
    assert body["model_version"].startswith("iris-rf-")
    return {output["name"]: output for output in body["outputs"]}


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"], body
    assert isinstance(body["error"], str)
    for fragment in fragments:
        assert fragment in body["error"], body
    message: str = body["error"]
    return message


async def predict_batch(
    client: httpx.AsyncClient, headers: dict[str, str], rows: list[list[float]]
) -> list[dict[str, Any]]:
    response = await client.post("/predict/batch", json={"instances": rows}, headers=headers)
    assert response.status_code == 200, response.text
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


# --- Public routes: no token, never counted.


async def test_server_metadata_health_and_model_readiness_need_no_token(
    client: httpx.AsyncClient,
) -> None:
    server = await client.get("/v2")
    assert server.status_code == 200
    assert server.json() == {"name": "secure-ml-api", "version": "0.1.0", "extensions": []}
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    ready = await client.get(f"/v2/models/{MODEL}/ready")
    assert ready.json() == {"name": MODEL, "ready": True}
    for response in (server, ready):
        assert "ratelimit" not in response.headers
        assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_public": "1/minute"}])
async def test_public_routes_are_not_rate_limited(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        for path in ("/v2", "/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready"):
            assert (await client.get(path)).status_code == 200, path


async def test_model_readiness_by_version(client: httpx.AsyncClient, app: Any) -> None:
    version = app.state.predictor.manifest.version
    ready = await client.get(f"/v2/models/{MODEL}/versions/{version}/ready")
    assert ready.json() == {"name": MODEL, "ready": True}
    for path in (
        f"/v2/models/{MODEL}/versions/{MODEL}-000000000000/ready",
        "/v2/models/other-model/ready",
        f"/v2/models/other-model/versions/{version}/ready",
    ):
        message = assert_error(await client.get(path), 404, MODEL, version)
        assert "other-model" not in message
        assert "000000000000" not in message


# --- Model metadata: any valid token.


async def test_model_metadata_comes_from_the_manifest(
    client: httpx.AsyncClient, admin_headers: dict[str, str], app: Any
) -> None:
    version = app.state.predictor.manifest.version
    expected = {
        "name": MODEL,
        "versions": [version],
        "platform": "sklearn",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]},
        ],
    }
    for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/{version}"):
        response = await client.get(path, headers=admin_headers)
        assert response.status_code == 200, response.text
        assert response.json() == expected
        assert "ratelimit" not in response.headers  # checked, not counted
    assert_error(await client.get(f"/v2/models/{MODEL}/versions/1", headers=admin_headers), 404)


async def test_model_metadata_needs_a_token_of_any_scope(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    missing = await client.get(f"/v2/models/{MODEL}")
    assert_error(missing, 401, "Not authenticated")
    assert missing.headers["www-authenticate"] == "Bearer"
    invalid = await client.get(f"/v2/models/{MODEL}", headers=bearer("not-a-token"))
    assert_error(invalid, 401)
    assert invalid.headers["www-authenticate"].startswith("Bearer")
    await create_user(client, admin_headers, "no-scopes", scopes=[])
    tokens = await login(client, "no-scopes", USER_PASSWORD)
    response = await client.get(f"/v2/models/{MODEL}", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200, response.text


# --- Infer: the same answers as /predict.


async def test_infer_equals_predict_on_every_iris_row(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    rows = IRIS.tolist()
    expected = await predict_batch(client, user_headers, rows)
    probabilities = [[p["probabilities"][c] for c in CLASSES] for p in expected]
    labels = [p["prediction"] for p in expected]
    for body in (
        tensor(rows, [150, 4]),  # nested FP64
        tensor(IRIS.ravel().tolist(), [150, 4]),  # flat FP64
        # FP32, as tritonclient prints float32 values: the forest compares in float32.
        tensor(IRIS.astype(np.float32).ravel().tolist(), [150, 4], "FP32"),
    ):
        got = outputs(await client.post(INFER, json=body, headers=user_headers))
        assert got["label"] == {
            "name": "label",
            "datatype": "INT64",
            "shape": [150],
            "data": labels,
        }
        assert got["probabilities"]["datatype"] == "FP64"
        assert got["probabilities"]["shape"] == [150, 3]
        served = np.asarray(got["probabilities"]["data"]).reshape(150, 3)
        np.testing.assert_array_equal(served, np.asarray(probabilities))
    for datatype in ("FP32", "FP64"):
        raw, headers = binary_body(IRIS, datatype)
        got = outputs(await client.post(INFER, content=raw, headers=user_headers | headers))
        assert got["label"]["data"] == labels
        np.testing.assert_array_equal(
            np.asarray(got["probabilities"]["data"]).reshape(150, 3), np.asarray(probabilities)
        )


async def test_one_row_and_the_versioned_route(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: Any
) -> None:
    single = (await client.post("/predict", json={"data": SETOSA}, headers=user_headers)).json()
    version = app.state.predictor.manifest.version
    for path in (INFER, f"/v2/models/{MODEL}/versions/{version}/infer"):
        got = outputs(await client.post(path, json=tensor(SETOSA, [1, 4]), headers=user_headers))
        assert got["label"]["data"] == [single["prediction"]]
        assert got["probabilities"]["data"] == [single["probabilities"][c] for c in CLASSES]
    other = f"/v2/models/{MODEL}/versions/1/infer"
    assert_error(await client.post(other, json=tensor(SETOSA, [1, 4]), headers=user_headers), 404)


async def test_outputs_select_and_order_the_answer(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    cases = [
        ([{"name": "probabilities"}], ["probabilities"]),
        ([{"name": "label"}], ["label"]),
        ([{"name": "probabilities"}, {"name": "label"}], ["probabilities", "label"]),
        # Binary outputs were asked for: the answer is JSON (the extension is optional).
        ([{"name": "label", "parameters": {"binary_data": True}}], ["label"]),
        (None, ["label", "probabilities"]),
    ]
    for requested, names in cases:
        body = tensor(SETOSA, [1, 4]) | ({"outputs": requested} if requested else {})
        response = await client.post(INFER, json=body, headers=user_headers)
        assert [o["name"] for o in response.json()["outputs"]] == names
    body = tensor(SETOSA, [1, 4], parameters={"binary_data_output": True}, id="req-42")
    response = await client.post(INFER, json=body, headers=user_headers)
    assert response.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in response.headers
    assert response.json()["id"] == "req-42"
    assert "data" in response.json()["outputs"][0]


async def test_any_content_type_or_none(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    """tritonclient sends no Content-Type at all."""
    raw = json.dumps(tensor(SETOSA, [1, 4])).encode()
    for content_type in (None, "application/json", "application/octet-stream", "text/plain"):
        headers = user_headers | ({"Content-Type": content_type} if content_type else {})
        response = await client.post(INFER, content=raw, headers=headers)
        assert response.status_code == 200, (content_type, response.text)


async def test_boundaries_are_accepted(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    body = tensor([[0, 0, 0, 0], [100, 100, 100, 100], [5, 3, 1, 0]], [3, 4])
    assert outputs(await client.post(INFER, json=body, headers=user_headers))["label"]


async def test_large_batches_run_off_the_event_loop(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    rows = [SETOSA] * 256  # above INLINE_INFERENCE_ROWS (64): the thread pool
    got = outputs(await client.post(INFER, json=tensor(rows, [256, 4]), headers=user_headers))
    assert got["label"]["data"] == [0] * 256


async def test_infer_is_recorded_like_predict(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    before = (await client.get("/metrics")).text
    rows = [SETOSA, [6.7, 3.0, 5.2, 2.3]]
    assert (
        await client.post(INFER, json=tensor(rows, [2, 4]), headers=user_headers)
    ).status_code == 200
    after = (await client.get("/metrics")).text
    for label in ("setosa", "virginica"):
        assert value(after, "predictions_total", label=label) == (
            value(before, "predictions_total", label=label) + 1
        )
    assert (
        value(after, "prediction_batch_size_count")
        == value(before, "prediction_batch_size_count") + 1
    )
    assert value(after, "inference_duration_seconds_count") == (
        value(before, "inference_duration_seconds_count") + 1
    )
    route = {"method": "POST", "route": INFER, "status": "200"}
    assert (
        value(after, "http_requests_total", **route)
        == value(before, "http_requests_total", **route) + 1
    )


async def test_the_openapi_example_is_accepted(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    schema = (await client.get("/openapi.json")).json()
    operation = schema["paths"][INFER]["post"]
    example = operation["requestBody"]["content"]["application/json"]["example"]
    assert example["inputs"][0]["shape"] == [1, 4]
    assert outputs(await client.post(INFER, json=example, headers=user_headers))
    assert {"400", "401", "403", "413", "429", "503"} <= set(operation["responses"])


# --- Bad tensors: 400 with {"error": ...}, never a 5xx, never the input repeated.

BAD_BODIES: dict[str, tuple[Any, str]] = {
    "shape-3-columns": (tensor([1.0, 2.0, 3.0], [1, 3]), "[N, 4]"),
    "shape-1d": (tensor(SETOSA, [4]), "[N, 4]"),
    "shape-3d": (tensor(SETOSA, [1, 4, 1]), "[N, 4]"),
    "no-rows": (tensor([], [0, 4]), "N must be 1 to 256"),
    "too-many-rows": (tensor([SETOSA] * 257, [257, 4]), "MAX_BATCH_SIZE"),
    "count-too-small": (tensor(SETOSA * 2, [3, 4]), "8 values where the shape needs 12"),
    "count-too-large": (tensor(SETOSA * 2, [1, 4]), "8 values where the shape needs 4"),
    "nested-rows": (tensor([SETOSA, SETOSA], [3, 4]), "2 rows where the shape says 3"),
    "ragged": (tensor([SETOSA, [1.0, 2.0]], [2, 4]), "2 lists of 4 numbers"),
    "too-deep": (tensor([[SETOSA]], [1, 4]), "1 lists of 4 numbers"),
    "int64": (tensor([5, 3, 1, 0], [1, 4], "INT64"), "FP32 or FP64"),
    "bytes": (tensor(["a", "b", "c", "d"], [1, 4], "BYTES"), "FP32 or FP64"),
    "unknown-datatype": (tensor(SETOSA, [1, 4], "FP99"), "inputs.0.datatype"),
    "string-number": (tensor(["5.1", 3.5, 1.4, 0.2], [1, 4]), "must be numbers"),
    "boolean": (tensor([True, 3.5, 1.4, 0.2], [1, 4]), "must be numbers"),
    "null": (tensor([None, 3.5, 1.4, 0.2], [1, 4]), "must be numbers"),
    "object": (tensor([{"x": 1}, 3.5, 1.4, 0.2], [1, 4]), "must be numbers"),
    "fp32-overflow": (tensor([1e39, 3.5, 1.4, 0.2], [1, 4], "FP32"), "finite"),
    "below-bounds": (
        tensor([5.1, -0.1, 1.4, 0.2], [1, 4]),
        "sepal_width must be between 0 and 100 (row 0)",
    ),
    "above-bounds": (
        tensor([SETOSA, [5.1, 3.5, 100.5, 0.2]], [2, 4]),
        "petal_length must be between 0 and 100 (row 1)",
    ),
    "unknown-output": (
        tensor(SETOSA, [1, 4], outputs=[{"name": "logits"}]),
        "label and probabilities",
    ),
    "repeated-output": (
        tensor(SETOSA, [1, 4], outputs=[{"name": "label"}, {"name": "label"}]),
        "at most once",
    ),
    "two-inputs": ({"inputs": [tensor(SETOSA, [1, 4])["inputs"][0]] * 2}, "exactly one input"),
    "no-inputs": ({"inputs": []}, "inputs"),
    "no-data": ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64"}]}, "no data"),
    "extra-key": (tensor(SETOSA, [1, 4], extra=1), "Extra inputs are not permitted"),
    "negative-dimension": (tensor(SETOSA, [-1, 4]), "inputs.0.shape.0"),
    "shape-as-floats": (tensor(SETOSA, [1.0, 4.0]), "inputs.0.shape.0"),
    "not-an-object": ([SETOSA], "request"),
    "predict-body": ({"data": SETOSA}, "inputs"),
    "binary-size-without-header": (
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16},
                }
            ]
        },
        "Inference-Header-Content-Length",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_bad_tensors_are_400(
    client: httpx.AsyncClient, user_headers: dict[str, str], case: str
) -> None:
    body, fragment = BAD_BODIES[case]
    assert_error(await client.post(INFER, json=body, headers=user_headers), 400, fragment)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[NaN,1.0,2.0,3.0]}]}',
        b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[Infinity,1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[-Infinity,1,2,3]}]}',
        b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[1e400,1,2,3]}]}',
        b"",
        b"{",
        b"\xff\xfe",
        b"[" * 5000 + b"]" * 5000,
        b'{"inputs":[]}{}',
    ],
    ids=[
        "nan",
        "infinity",
        "minus-infinity",
        "overflow",
        "empty",
        "truncated",
        "not-utf8",
        "deep",
        "two-documents",
    ],
)
async def test_malformed_json_is_400(
    client: httpx.AsyncClient, user_headers: dict[str, str], raw: bytes
) -> None:
    assert_error(await client.post(INFER, content=raw, headers=user_headers), 400)


async def test_bad_binary_tensors_are_400(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    raw, headers = binary_body(IRIS[:2], "FP32")
    length = int(headers["Inference-Header-Content-Length"])
    cases: list[tuple[bytes, dict[str, str], str]] = [
        (raw[:-4], headers, "binary_data_size must be the 28 bytes"),  # truncated
        (raw + b"\0" * 4, headers, "binary_data_size must be the 36 bytes"),  # trailing bytes
        (raw, {"Inference-Header-Content-Length": str(len(raw) + 1)}, "longer than the body"),
        (raw, {"Inference-Header-Content-Length": "-5"}, "a byte count"),
        (raw, {"Inference-Header-Content-Length": "abc"}, "a byte count"),
        (raw, {"Inference-Header-Content-Length": str(length - 1)}, "not JSON"),
        (raw, {}, "not JSON"),  # binary without the header
    ]
    # Sizes that agree with each other but not with the shape: FP64 bytes for FP32.
    wrong, wrong_headers = binary_body(IRIS[:1], "FP64")
    cases.append((wrong.replace(b'"FP64"', b'"FP32"'), wrong_headers, "need 16"))
    # NaN and out-of-bounds values in binary form.
    nan_rows = IRIS[:2].copy()
    nan_rows[1, 1] = np.nan
    cases.append((*binary_body(nan_rows, "FP64"), "finite"))
    cases.append((*binary_body(IRIS[:2] * 100, "FP32"), "must be between 0 and 100"))
    # JSON data and stray bytes after the header.
    header = json.dumps(tensor(SETOSA, [1, 4])).encode()
    cases.append(
        (
            header + b"\0" * 8,
            {"Inference-Header-Content-Length": str(len(header))},
            "no input declares",
        )
    )
    both = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "data": SETOSA,
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    ).encode()
    cases.append(
        (both + b"\0" * 16, {"Inference-Header-Content-Length": str(len(both))}, "both data and")
    )
    for body, extra, fragment in cases:
        response = await client.post(INFER, content=body, headers=user_headers | extra)
        assert_error(response, 400, fragment)


# --- Authentication, authorisation, limits, unknown models: the status, {"error"}.


async def test_infer_needs_a_token_with_the_predict_scope(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    body = tensor(SETOSA, [1, 4])
    missing = await client.post(INFER, json=body)
    assert_error(missing, 401, "Not authenticated")
    assert missing.headers["www-authenticate"] == "Bearer"
    expired = await client.post(INFER, json=body, headers=bearer("a.b.c"))
    assert_error(expired, 401)
    assert expired.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    await create_user(client, admin_headers, "admin-only", scopes=["admin"])
    tokens = await login(client, "admin-only", USER_PASSWORD)
    refused = await client.post(INFER, json=body, headers=bearer(tokens["access_token"]))
    assert_error(refused, 403, "predict")
    assert 'scope="predict"' in refused.headers["www-authenticate"]
    assert "ratelimit" not in refused.headers  # not counted


async def test_unknown_model_is_404_before_the_token_and_not_counted(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    body = tensor(SETOSA, [1, 4])
    for headers in ({}, user_headers):
        response = await client.post("/v2/models/nope/infer", json=body, headers=headers)
        message = assert_error(response, 404, "iris-rf")
        assert "nope" not in message
        assert "ratelimit" not in response.headers
    counted = await client.post(INFER, json=body, headers=user_headers)
    assert counted.headers["ratelimit"].startswith('"default";r=999;')  # the first counted


async def test_other_errors_under_v2_are_error_objects(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    assert_error(await client.get("/v2/nothing/here"), 404)
    wrong_method = await client.delete("/v2/health/live")
    assert_error(wrong_method, 405)
    assert wrong_method.headers["allow"] == "GET"
    assert_error(await client.get(INFER, headers=user_headers), 405)
    big = (
        b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":['
        + b"1," * 40000
        + b"1]}]}"
    )
    assert_error(await client.post(INFER, content=big, headers=user_headers), 413, "too large")
    # Elsewhere the same answers keep their {"detail"} shape.
    assert "detail" in (await client.get("/nothing/here")).json()


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_predict": "3/minute"}])
async def test_one_quota_for_predict_and_infer(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    body = tensor(SETOSA, [1, 4])
    assert (
        await client.post("/predict", json={"data": SETOSA}, headers=user_headers)
    ).status_code == 200
    first = await client.post(INFER, json=body, headers=user_headers)
    assert first.status_code == 200
    assert first.headers["ratelimit-policy"] == '"default";q=3;w=60'
    assert first.headers["ratelimit"].startswith('"default";r=1;')
    assert (
        await client.post("/predict/batch", json={"instances": [SETOSA]}, headers=user_headers)
    ).status_code == 200
    limited = await client.post(INFER, json=body, headers=user_headers)
    assert_error(limited, 429, "Too many requests")
    assert int(limited.headers["retry-after"]) >= 1
    predict = await client.post("/predict", json={"data": SETOSA}, headers=user_headers)
    assert predict.status_code == 429
    assert predict.json()["detail"] == "Too many requests"
    # Metadata and the public routes are not counted: they still answer.
    assert (await client.get(f"/v2/models/{MODEL}", headers=user_headers)).status_code == 200
    assert (await client.get(f"/v2/models/{MODEL}/ready")).status_code == 200


async def test_without_redis_infer_is_503_and_liveness_stays(model_dir: Path) -> None:
    """Nothing listens on the port: every Redis call fails fast."""
    settings = make_settings(f"redis://127.0.0.1:{free_port()}/0", model_dir, admin_username=None)
    app = create_app(settings)
    token = TokenService(settings).issue_pair(
        "alice", frozenset({Scope.PREDICT}), "v1", session="s1",
        session_ends_at=int(time.time()) + 3600,
    ).access_token  # fmt: skip
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            infer = await client.post(INFER, json=tensor(SETOSA, [1, 4]), headers=bearer(token))
            assert_error(infer, 503, "storage unreachable")
            assert infer.headers["retry-after"] == "1"
            metadata = await client.get(f"/v2/models/{MODEL}", headers=bearer(token))
            assert_error(metadata, 503)
            ready = await client.get("/v2/health/ready")
            assert_error(ready, 503, "redis unreachable")
            assert ready.headers["retry-after"] == "1"
            assert (await client.get("/v2/health/live")).status_code == 200
            assert (await client.get(f"/v2/models/{MODEL}/ready")).status_code == 200
