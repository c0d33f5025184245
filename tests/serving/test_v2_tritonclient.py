"""A real V2 client, unmodified: tritonclient.http against gunicorn over HTTP. Its defaults
included: binary input tensors after an Inference-Header-Content-Length JSON header, no
Content-Type, binary outputs asked for (answered as JSON). Results equal /predict's on every
Iris row; errors reach the caller as InferenceServerException with the server's message.

Request by request, in-process: tests/api/routes/test_v2.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_iris
from tritonclient.utils import InferenceServerException

from tests.support.auth import bearer, login_sync
from tests.support.processes import REPO_ROOT, GunicornProcess
from tests.support.settings import ADMIN_PASSWORD, ADMIN_USERNAME, USER_PASSWORD

pytestmark = pytest.mark.slow

MODEL = "iris-rf"
IRIS = load_iris().data
CLASSES = ["setosa", "versicolor", "virginica"]


@pytest.fixture(scope="module")
def tokens(http_server: GunicornProcess) -> dict[str, str]:
    """Access tokens of a `predict` user and of a user without scopes."""
    with httpx.Client(base_url=http_server.url, timeout=30) as http:
        admin = bearer(login_sync(http, ADMIN_USERNAME, ADMIN_PASSWORD)["access_token"])
        found: dict[str, str] = {}
        for username, scopes in (("triton-user", ["predict"]), ("triton-noscope", [])):
            body = {"username": username, "password": USER_PASSWORD, "scopes": scopes}
            created = http.post("/users", json=body, headers=admin)
            assert created.status_code in (201, 409), created.text
            found[username] = login_sync(http, username, USER_PASSWORD)["access_token"]
        return found


class Auth(dict[str, str]):
    """The bearer header, copied at each call: tritonclient writes its
    Inference-Header-Content-Length into the headers dict it is given, and a later call
    would send that stale length (the README says so)."""

    def __call__(self) -> dict[str, str]:
        return dict(self)


@pytest.fixture(scope="module")
def auth(tokens: dict[str, str]) -> Auth:
    return Auth(bearer(tokens["triton-user"]))


@pytest.fixture
def client(http_server: GunicornProcess) -> Iterator[Any]:
    # tritonclient takes host:port, without a scheme.
    client = triton.InferenceServerClient(url=http_server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def expected(http_server: GunicornProcess, auth: Auth) -> dict[str, Any]:
    """/predict's answer for each Iris row, one request per row."""
    labels, probabilities = [], []
    with httpx.Client(base_url=http_server.url, timeout=30) as http:
        for row in IRIS.tolist():
            response = http.post("/predict", json={"data": row}, headers=auth())
            assert response.status_code == 200, response.text
            body = response.json()
            labels.append(body["prediction"])
            probabilities.append([body["probabilities"][c] for c in CLASSES])
    return {"label": np.array(labels), "probabilities": np.array(probabilities)}


def test_health_and_metadata(client: Any, auth: Auth) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)  # no token needed
    assert not client.is_model_ready("other-model")
    server = client.get_server_metadata()
    assert server["name"] == "secure-ml-api"
    metadata = client.get_model_metadata(MODEL, headers=auth())
    (version,) = metadata["versions"]
    assert client.is_model_ready(MODEL, model_version=version)
    assert client.get_model_metadata(MODEL, model_version=version, headers=auth()) == metadata
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("input-0", "FP64", [-1, 4])
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP64", [-1, 3]),
    ]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata(MODEL)
    assert (info.value.status(), info.value.message()) == ("401", "Not authenticated")


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("binary_input", [True, False], ids=["binary-input", "json-input"])
@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-asked", "json-asked"])
def test_infer_equals_predict_on_every_iris_row(
    client: Any,
    auth: Auth,
    expected: dict[str, Any],
    datatype: str,
    binary_input: bool,
    binary_output: bool,
) -> None:
    rows = IRIS.astype(np.float32 if datatype == "FP32" else np.float64)
    tensor = triton.InferInput("input-0", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows, binary_data=binary_input)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=binary_output),
        triton.InferRequestedOutput("probabilities", binary_data=binary_output),
    ]
    result = client.infer(MODEL, [tensor], outputs=outputs, headers=auth())
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    # FP32 rows are the float32 values of the FP64 ones; the forest compares in float32.
    np.testing.assert_array_equal(result.as_numpy("probabilities"), expected["probabilities"])
    assert result.as_numpy("probabilities").dtype == np.float64


def test_default_outputs_versions_and_request_ids(client: Any, auth: Auth) -> None:
    rows = IRIS[:3].astype(np.float32)
    tensor = triton.InferInput("input-0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)  # binary, as by default
    # No outputs named: tritonclient asks for every output in binary (binary_data_output).
    result = client.infer(MODEL, [tensor], headers=auth(), request_id="req-42")
    assert result.get_response()["id"] == "req-42"
    assert result.as_numpy("label").tolist() == [0, 0, 0]
    version = client.get_model_metadata(MODEL, headers=auth())["versions"][0]
    again = client.infer(MODEL, [tensor], model_version=version, headers=auth())
    assert again.get_response()["model_version"] == version
    only = client.infer(
        MODEL, [tensor], outputs=[triton.InferRequestedOutput("probabilities")], headers=auth()
    )
    assert only.as_numpy("label") is None
    assert only.as_numpy("probabilities").shape == (3, 3)


def _refusal(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status(), info.value.message()


def _infer(
    client: Any, rows: Any, *, model: str = MODEL, binary: bool = True, **kwargs: Any
) -> Any:
    datatype = "FP32" if rows.dtype == np.float32 else "FP64"
    tensor = triton.InferInput("input-0", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return lambda: client.infer(model, [tensor], **kwargs)


def test_errors_carry_the_servers_message(client: Any, auth: Auth, tokens: dict[str, str]) -> None:
    rows = IRIS[:2].astype(np.float32)
    assert _refusal(_infer(client, rows)) == ("401", "Not authenticated")
    no_scope = bearer(tokens["triton-noscope"])
    assert _refusal(_infer(client, rows, headers=no_scope)) == (
        "403",
        "Token lacks the 'predict' scope",
    )
    status, message = _refusal(_infer(client, np.ones((2, 3), np.float32), headers=auth()))
    assert (status, message) == ("400", "inputs.0.shape: this model takes [N, 4]")
    status, message = _refusal(_infer(client, rows, model="other-model", headers=auth()))
    assert status == "404"
    assert message.startswith("unknown model or version: this server serves iris-rf version")
    nan = rows.copy()
    nan[1, 2] = np.nan
    for binary in (True, False):  # a raw float, or the JSON `NaN` token tritonclient writes
        status, message = _refusal(_infer(client, nan, binary=binary, headers=auth()))
        assert status == "400"
        assert "finite" in message or "NaN and Infinity are not JSON numbers" in message
    status, message = _refusal(_infer(client, rows * 100, headers=auth()))
    assert (status, message) == (
        "400",
        "inputs.0.data: sepal_length must be between 0 and 100 (row 0)",
    )
    outputs = [triton.InferRequestedOutput("logits")]
    status, message = _refusal(_infer(client, rows, outputs=outputs, headers=auth()))
    assert (status, message) == (
        "400",
        "outputs: this model answers label and probabilities, each at most once",
    )


# The README's V2 snippets, run as written (the host and token given as a reader would).


def _readme_v2(language: str) -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("\n### Open Inference Protocol (V2)\n")
    section = text[start : text.index("\n## ", start)]
    return re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)


def test_the_readme_tritonclient_snippet_runs(
    http_server: GunicornProcess,
    tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (snippet,) = _readme_v2("python")
    monkeypatch.setenv("API_HOST", http_server.url.removeprefix("http://"))
    monkeypatch.setenv("API_USERNAME", "triton-user")
    monkeypatch.setenv("API_PASSWORD", USER_PASSWORD)
    exec(compile(snippet, "README.md (tritonclient)", "exec"), {"__name__": "readme"})  # noqa: S102
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "True True"
    assert "'shape': [-1, 4]" in lines[1]
    assert lines[2] == "[0 2]"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_readme_curl_snippet_runs(
    http_server: GunicornProcess, auth: Auth, tmp_path: Path
) -> None:
    (snippet,) = _readme_v2("sh")
    script = snippet.replace("http://127.0.0.1:8000", http_server.url)
    token = auth()["Authorization"].removeprefix("Bearer ")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=False, env={"PATH": os.environ["PATH"], "TOKEN": token},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = [line.removeprefix("# ") for line in snippet.splitlines() if line.startswith("# {")]
    answers = done.stdout.replace("}{", "}\n{").splitlines()
    assert answers[0] == expected[0]  # {"ready":true}
    assert json.loads(answers[1])["name"] == MODEL
    assert json.loads(answers[2])["outputs"] == json.loads(expected[1])["outputs"]
    assert answers[3] == expected[2]
