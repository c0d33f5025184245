"""Hypothesis properties: the input rules of the request models, the model's outputs, the
rate-limit syntax, and raw junk thrown at the body-taking routes.

The model-level properties are pure and cheap, so they get many examples even in
`make test`; the HTTP ones go through the in-process app and scale with FUZZ_EXAMPLES.
"""

from __future__ import annotations

import email.message
import json
import math
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis.python import asgi

from service.api.schemas import PredictionSchemas, RefreshRequest, UserCreate
from service.infra.config import Settings
from service.ml.artifact import read_manifest
from service.rules.accounts import check_password
from service.rules.rates import MAX_RATE_LIMIT, Rate
from tests.fuzz.conftest import fuzz_examples, fuzz_hypothesis_settings
from tests.support.auth import bearer, login_sync
from tests.support.settings import ADMIN_PASSWORD, ADMIN_USERNAME, USER_PASSWORD, trained_model_dir

# The served model's request bodies, as the app builds them from its manifest.
_SCHEMAS = PredictionSchemas.for_manifest(read_manifest(trained_model_dir()))
PredictRequest = _SCHEMAS.request
BatchPredictRequest = _SCHEMAS.batch_request

PURE = fuzz_hypothesis_settings(examples=max(200, fuzz_examples()))
HTTP = fuzz_hypothesis_settings()
TARGET_USER = "fuzz-props"
PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

# ---------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------

measurements = st.floats(min_value=0.0, max_value=100.0, allow_nan=False) | st.integers(0, 100)
valid_rows = st.lists(measurements, min_size=4, max_size=4)

bad_measurements = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.floats(max_value=0.0, exclude_max=True, allow_nan=False),
    st.floats(min_value=100.0, exclude_min=True, allow_nan=False),
    st.integers(max_value=-1),
    st.integers(min_value=101),
    st.booleans(),
    st.text(max_size=8),
    st.none(),
    st.lists(measurements, max_size=4),
    st.dictionaries(st.text(max_size=4), measurements, max_size=2),
)


@st.composite
def rows_with_one_bad_element(draw: st.DrawFn) -> list[Any]:
    row: list[Any] = draw(valid_rows)
    row[draw(st.integers(0, 3))] = draw(bad_measurements)
    return row


wrong_length_rows = st.lists(measurements, max_size=10).filter(lambda r: len(r) != 4)
bad_rows = st.one_of(rows_with_one_bad_element(), wrong_length_rows)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)

usernames = st.from_regex(r"\A[A-Za-z0-9_.-]{3,64}\Z")
passwords = st.text(min_size=12, max_size=1024)
scope_lists = st.lists(st.sampled_from(["predict", "admin"]), max_size=8)


def _dumps(value: Any) -> bytes:
    """JSON as a lenient client would send it: NaN and Infinity become bare literals,
    which Python's parser (and so FastAPI's) accepts."""
    return json.dumps(value, allow_nan=True).encode()


def _rejected(model: type[Any], value: Any) -> bool:
    try:
        model.model_validate(value)
    except ValidationError:
        return True
    return False


# ---------------------------------------------------------------------------------------
# Request models (pure)
# ---------------------------------------------------------------------------------------


@given(valid_rows)
@PURE
def test_any_four_finite_measurements_in_range_validate(row: list[float]) -> None:
    assert PredictRequest.model_validate({"data": row}).model_dump() == {"data": row}
    batch = {"instances": [row, row]}
    assert BatchPredictRequest.model_validate(batch).model_dump() == batch


@given(bad_rows)
@PURE
def test_a_bad_row_is_rejected(row: list[Any]) -> None:
    """Non-finite, out of range, bool, str, None, nested, or not exactly four."""
    assert _rejected(PredictRequest, {"data": row})


@given(st.lists(valid_rows, max_size=5), bad_rows, st.integers(0, 5))
@PURE
def test_one_bad_row_rejects_the_whole_batch(
    good: list[list[float]], bad: list[Any], at: int
) -> None:
    instances: list[Any] = list(good)
    instances.insert(min(at, len(instances)), bad)
    assert _rejected(BatchPredictRequest, {"instances": instances})


@given(json_values.filter(lambda v: not isinstance(v, list)))
@PURE
def test_data_that_is_not_a_list_is_rejected(value: Any) -> None:
    assert _rejected(PredictRequest, {"data": value})
    assert _rejected(BatchPredictRequest, {"instances": value})


@given(valid_rows, st.text(max_size=10).filter(lambda k: k != "data"), json_values)
@PURE
def test_extra_fields_are_rejected(row: list[float], key: str, value: Any) -> None:
    assert _rejected(PredictRequest, {"data": row, key: value})


def test_an_empty_batch_is_rejected() -> None:
    assert _rejected(BatchPredictRequest, {"instances": []})


@given(usernames, passwords, scope_lists)
@PURE
def test_any_user_within_the_rules_validates(
    username: str, password: str, scopes: list[str]
) -> None:
    user = UserCreate.model_validate({"username": username, "password": password, "scopes": scopes})
    assert user.username == username.lower()
    assert user.scopes == sorted(set(scopes))
    assert UserCreate.model_validate({"username": username, "password": password}).scopes == [
        "predict"
    ]


@given(st.text(max_size=70).filter(lambda s: not re.fullmatch(r"[A-Za-z0-9_.-]{3,64}", s)))
@example("ab")
@example("a" * 65)
@example("abc\n")
@example("abc def")
@example("ädmin")
@PURE
def test_a_username_outside_the_pattern_is_rejected(username: str) -> None:
    assert _rejected(UserCreate, {"username": username, "password": USER_PASSWORD})


@given(usernames, st.text(max_size=11) | st.text(min_size=1025, max_size=1100))
@PURE
def test_a_password_of_the_wrong_length_is_rejected(username: str, password: str) -> None:
    assert _rejected(UserCreate, {"username": username, "password": password})


@given(usernames, st.lists(st.text(max_size=10), min_size=1, max_size=8))
@PURE
def test_unknown_scopes_are_rejected(username: str, scopes: list[str]) -> None:
    assume(not set(scopes) <= {"predict", "admin"})
    body = {"username": username, "password": USER_PASSWORD, "scopes": scopes}
    assert _rejected(UserCreate, body)


@given(usernames, st.sampled_from(["username", "password", "scopes"]), json_scalars)
@PURE
def test_wrongly_typed_user_fields_are_rejected(username: str, field: str, value: Any) -> None:
    """Strict: no coercion from numbers, booleans or None into strings or lists."""
    body: dict[str, Any] = {"username": username, "password": USER_PASSWORD, "scopes": []}
    assume(not isinstance(value, str) or field == "scopes")
    body[field] = value
    assert _rejected(UserCreate, body)


@given(st.from_regex(r"\A[A-Za-z0-9_.-]{12,64}\Z"))
@PURE
def test_the_password_must_not_be_the_username(username: str) -> None:
    """Enforced by the route (a 422), not by the model: the rule it calls, any case."""
    with pytest.raises(ValueError, match="username"):
        check_password(username, username.swapcase())


# ---------------------------------------------------------------------------------------
# Rate.parse
# ---------------------------------------------------------------------------------------

ASCII_SPACE = " \t\n\r\x0b\x0c"
GRAMMAR = re.compile(
    r"[ \t\n\r\x0b\x0c]*([0-9]+)/(second|minute|hour|day)s?[ \t\n\r\x0b\x0c]*",
    re.IGNORECASE | re.ASCII,
)


def _random_case(draw: st.DrawFn, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if flip else c for c, flip in zip(word, flips, strict=True))


@st.composite
def rate_texts(draw: st.DrawFn) -> tuple[str, int, int]:
    """A text in the grammar, with the limit and window it means."""
    limit = draw(st.integers(1, MAX_RATE_LIMIT))
    unit = draw(st.sampled_from(sorted(PERIODS)))
    digits = "0" * draw(st.integers(0, 3)) + str(limit)
    word = _random_case(draw, unit + ("s" if draw(st.booleans()) else ""))
    pad = st.text(alphabet=ASCII_SPACE, max_size=3)
    return f"{draw(pad)}{digits}/{word}{draw(pad)}", limit, PERIODS[unit]


@given(rate_texts())
@PURE
def test_rate_spec_parses_the_grammar_and_round_trips(case: tuple[str, int, int]) -> None:
    text, limit, window = case
    spec = Rate.parse(text)
    assert (spec.limit, spec.window) == (limit, window)
    assert Rate.parse(str(spec)) == spec
    assert re.fullmatch(r"[1-9][0-9]*/(second|minute|hour|day)", str(spec))


def _oracle(text: str) -> tuple[int, int] | None:
    match = GRAMMAR.fullmatch(text)
    if match is None or not 1 <= int(match.group(1)) <= MAX_RATE_LIMIT:
        return None
    return int(match.group(1)), PERIODS[match.group(2).lower()]


def _parse(text: str) -> tuple[int, int] | None:
    try:
        spec = Rate.parse(text)
    except ValueError:
        return None
    return spec.limit, spec.window


@st.composite
def near_miss_rates(draw: st.DrawFn) -> str:
    """Valid texts with one character inserted, deleted or replaced, and token soup."""
    if draw(st.booleans()):
        return draw(st.text(alphabet="0123456789/+-.exSMHDsecondminutehourday", max_size=16))
    text: str = draw(rate_texts())[0].strip()
    at = draw(st.integers(0, len(text)))
    char = draw(st.sampled_from("0123456789/+-.xs"))
    edit = draw(st.sampled_from(["insert", "delete", "replace"]))
    if edit == "insert":
        return text[:at] + char + text[at:]
    if edit == "delete":
        return text[:at] + text[at + 1 :]
    return text[:at] + char + text[at + 1 :]


@given(near_miss_rates())
@example("0/second")
@example("000/minute")
@example("-1/minute")
@example("1.5/hour")
@example("1/fortnight")
@example("1/")
@example("/minute")
@example("1 minute")
@example("1//minute")
@example("1/minutess")
@example("1e3/second")
@PURE
def test_rate_spec_accepts_exactly_the_grammar_over_ascii(text: str) -> None:
    """`^\\d+/(second|minute|hour|day)s?$`, case-insensitive, 1 <= N <= MAX_RATE_LIMIT,
    whitespace only around the whole: an accepted text means what the grammar says;
    anything else is a ValueError. Whitespace inside the text is left to the next test."""
    assume(not any(c in ASCII_SPACE for c in text.strip()))
    assert _parse(text) == _oracle(text)


@given(st.text(max_size=24))
@example("5 / minute")  # whitespace inside the rate
@example("\u0665/minute")  # ARABIC-INDIC DIGIT FIVE: not an ASCII digit
@example("\u00a01/day\u2003")  # no-break and em spaces: not ASCII white space
@example("1/minute\u017f")  # LATIN SMALL LETTER LONG S case-folds to "s" in Unicode
@example("1/\u017fecond")  # ... which once reached the period table as a KeyError (a 500)
@PURE
def test_rate_spec_accepts_exactly_the_grammar_over_any_text(text: str) -> None:
    assert _parse(text) == _oracle(text)


@given(st.text(max_size=24))
@example("1/\u017fecond")
@example("1/M\u0130NUTE")
@PURE
def test_rate_spec_fails_only_with_value_error(text: str) -> None:
    _parse(text)


# ---------------------------------------------------------------------------------------
# Through the app: predictions, raw bodies, junk tokens
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin_headers(api: asgi.ASGIClient) -> dict[str, str]:
    return bearer(login_sync(api, ADMIN_USERNAME, ADMIN_PASSWORD)["access_token"])


@pytest.fixture(scope="module")
def target_user(api: asgi.ASGIClient, admin_headers: dict[str, str]) -> str:
    body = {"username": TARGET_USER, "password": USER_PASSWORD, "scopes": ["predict"]}
    response = api.post("/users", json=body, headers=admin_headers)
    assert response.status_code == 201, response.text
    return TARGET_USER


@pytest.fixture(scope="module")
def class_names(api: asgi.ASGIClient, admin_headers: dict[str, str]) -> list[str]:
    response = api.get("/model", headers=admin_headers)
    assert response.status_code == 200, response.text
    names: list[str] = response.json()["class_names"]
    return names


def _check_prediction(item: dict[str, Any], class_names: list[str]) -> None:
    probabilities = item["probabilities"]
    assert list(probabilities) == class_names
    values = [probabilities[name] for name in class_names]
    assert all(0.0 <= p <= 1.0 for p in values), values
    assert math.isclose(sum(values), 1.0, rel_tol=0, abs_tol=1e-9), values
    winner = max(range(len(values)), key=values.__getitem__)  # first maximum, like argmax
    assert item["prediction"] == winner
    assert item["label"] == class_names[winner]


@given(valid_rows)
@HTTP
def test_predictions_are_distributions_whose_argmax_is_the_prediction(
    api: asgi.ASGIClient, admin_headers: dict[str, str], class_names: list[str], row: list[float]
) -> None:
    response = api.post("/predict", json={"data": row}, headers=admin_headers)
    assert response.status_code == 200, response.text
    _check_prediction(response.json(), class_names)


@given(st.lists(valid_rows, min_size=1, max_size=8))
@HTTP
def test_a_batch_predicts_each_row_as_predict_does(
    api: asgi.ASGIClient,
    admin_headers: dict[str, str],
    class_names: list[str],
    rows: list[list[float]],
) -> None:
    response = api.post("/predict/batch", json={"instances": rows}, headers=admin_headers)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(rows)
    for item in predictions:
        _check_prediction(item, class_names)
    single = api.post("/predict", json={"data": rows[-1]}, headers=admin_headers).json()
    assert single["probabilities"] == predictions[-1]["probabilities"]


@given(bad_rows)
@HTTP
def test_a_bad_row_is_a_422_over_http(
    api: asgi.ASGIClient, admin_headers: dict[str, str], row: list[Any]
) -> None:
    for path, body in (("/predict", {"data": row}), ("/predict/batch", {"instances": [row]})):
        response = api.post(
            path,
            data=_dumps(body),
            headers={**admin_headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, (path, body, response.text)
        assert isinstance(response.json()["detail"], list)


def _valid_user_body(value: Any) -> bool:
    try:
        user = UserCreate.model_validate(value)
        check_password(user.username, user.password)
    except ValueError:  # pydantic's ValidationError is one
        return False
    return True


def _valid(path: str, value: Any) -> bool:
    if path == "/predict":
        return not _rejected(PredictRequest, value)
    if path == "/predict/batch":
        return not _rejected(BatchPredictRequest, value) and len(value["instances"]) <= 256
    if path == "/token/refresh":
        return not _rejected(RefreshRequest, value)
    if path == "/users":
        return _valid_user_body(value)
    return False  # /token takes a form, never JSON


# What a valid body gets on each route; every other body must get a 4xx.
VALID_BODY_STATUSES = {
    "/predict": {200},
    "/predict/batch": {200},
    "/token/refresh": {401},  # well formed, but no such refresh token
    "/users": {201, 409},
}
BODY_ROUTES = ["/predict", "/predict/batch", "/token", "/token/refresh", "/users"]


def _check_answer(response: Any, path: str, valid: bool, sent: bytes) -> None:
    status = response.status_code
    assert status < 500, (path, sent[:200], status, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    if valid:
        assert status in VALID_BODY_STATUSES[path], (path, sent[:200], status, response.text)
    else:
        assert 400 <= status < 500, (path, sent[:200], status, response.text)
        assert "detail" in response.json()


near_valid_bodies = st.one_of(
    st.fixed_dictionaries({"data": json_values}),
    st.fixed_dictionaries({"instances": st.lists(json_values, max_size=4)}),
    st.fixed_dictionaries({"refresh_token": json_values}),
    st.fixed_dictionaries(
        {"username": json_values | usernames, "password": json_values | passwords},
        optional={"scopes": json_values | scope_lists, "extra": json_values},
    ),
)


@given(st.sampled_from(BODY_ROUTES), json_values | near_valid_bodies)
@HTTP
def test_any_json_body_gets_a_4xx_unless_valid(
    api: asgi.ASGIClient, admin_headers: dict[str, str], path: str, value: Any
) -> None:
    sent = _dumps(value)
    response = api.post(
        path, data=sent, headers={**admin_headers, "Content-Type": "application/json"}
    )
    _check_answer(response, path, _valid(path, value), sent)


def _parsed_as_json(content_type: str | None) -> bool:
    """FastAPI's rule: no Content-Type, application/json or application/*+json."""
    if content_type is None or not content_type.strip():
        return True
    message = email.message.Message()
    message["content-type"] = content_type.strip()
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=latin-1",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/form-data; boundary=xyz",
    "text/plain",
    "application/vnd.api+json",
    "application/octet-stream",
]


@given(
    st.sampled_from(BODY_ROUTES),
    st.binary(max_size=2048),
    st.sampled_from(CONTENT_TYPES)
    | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
)
@example("/token", b"username=admin&password=", "application/x-www-form-urlencoded")
@example("/token", b"--xyz\r\nContent-Disposition: form-data\r\n\r\n", "multipart/form-data")
@example("/predict", b"\xff\xfe", "application/json")
@example("/predict", b"[" * 5000 + b"]" * 5000, "application/json")
@example("/predict", b'{"data": [' + b"9" * 5000 + b", 1, 1, 1]}", "application/json")
@HTTP
def test_any_bytes_get_a_4xx_unless_valid(
    api: asgi.ASGIClient,
    admin_headers: dict[str, str],
    path: str,
    body: bytes,
    content_type: str | None,
) -> None:
    headers = dict(admin_headers)
    if content_type is not None:
        headers["Content-Type"] = content_type.strip()
    response = api.post(path, data=body, headers=headers)
    valid = False
    if _parsed_as_json(content_type):
        try:
            valid = _valid(path, json.loads(body))
        except ValueError:  # not JSON (UnicodeDecodeError and JSONDecodeError are ValueErrors)
            valid = False
        except RecursionError:
            valid = False
    _check_answer(response, path, valid, body)


@given(json_values)
@example({"rate_limit": "1/\u017fecond"})
@HTTP
def test_any_user_update_gets_an_answer_below_500(
    api: asgi.ASGIClient, admin_headers: dict[str, str], target_user: str, value: Any
) -> None:
    sent = _dumps(value)
    response = api.patch(
        f"/users/{target_user}",
        data=sent,
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert response.status_code < 500, (sent, response.text)


@given(
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=300
    )
    | st.builds(
        lambda parts: ".".join(parts),
        st.lists(
            st.text(
                alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=",
                max_size=60,
            ),
            min_size=1,
            max_size=4,
        ),
    )
)
@HTTP
def test_any_junk_bearer_token_is_a_401(api: asgi.ASGIClient, token: str) -> None:
    for method, path in (("GET", "/users/me"), ("POST", "/predict"), ("GET", "/users")):
        response = api.request(method, path, headers=bearer(token), json={"data": [1, 1, 1, 1]})
        assert response.status_code == 401, (method, path, token, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("extra", [-1, 0, 1, 4096])
def test_the_body_limit_is_exact(
    api: asgi.ASGIClient,
    admin_headers: dict[str, str],
    fuzz_settings: Settings,
    chunked: bool,
    extra: int,
) -> None:
    """Exactly MAX_BODY_BYTES passes on to the route (a 422 for this junk); one byte more is
    a 413, whether the size is declared or the body is streamed."""
    limit = fuzz_settings.max_body_bytes
    body = b" " * (limit + extra)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    response = api.post(
        "/predict",
        data=chunks() if chunked else body,
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert response.status_code == (413 if extra > 0 else 422), response.text


# ---------------------------------------------------------------------------------------
# The Open Inference Protocol (V2): the batch's answers, and 200 or a 400 {"error"} for
# anything else
# ---------------------------------------------------------------------------------------

V2_INFER = "/v2/models/iris-rf/infer"


@given(
    st.lists(valid_rows, min_size=1, max_size=8),
    st.sampled_from(["FP32", "FP64"]),
    st.booleans(),
)
@HTTP
def test_v2_infer_answers_as_the_batch_does(
    api: asgi.ASGIClient,
    admin_headers: dict[str, str],
    rows: list[list[float]],
    datatype: str,
    nested: bool,
) -> None:
    """FP32 data are the rows' float32 values: the forest compares in float32 anyway."""
    batch = api.post("/predict/batch", json={"instances": rows}, headers=admin_headers).json()
    values = [[float(np.float32(v)) for v in row] for row in rows] if datatype == "FP32" else rows
    data: list[Any] = values if nested else [v for row in values for v in row]
    tensor: dict[str, Any] = {"name": "x", "shape": [len(rows), 4], "datatype": datatype}
    tensor["data"] = data
    response = api.post(V2_INFER, json={"inputs": [tensor]}, headers=admin_headers)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    predictions = batch["predictions"]
    assert outputs["label"] == [p["prediction"] for p in predictions]
    names = list(predictions[0]["probabilities"])
    expected = [p["probabilities"][name] for p in predictions for name in names]
    assert outputs["probabilities"] == expected


v2_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "inputs": st.lists(
                st.fixed_dictionaries(
                    {
                        "name": json_values,
                        "shape": st.lists(st.integers(-1, 6), max_size=3) | json_values,
                        "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BYTES"])
                        | json_values,
                    },
                    optional={
                        "data": st.lists(json_values | st.floats(), max_size=12),
                        "parameters": json_values,
                    },
                ),
                max_size=2,
            )
        },
        optional={"outputs": json_values, "id": json_values, "parameters": json_values},
    ),
)


@given(
    v2_bodies.map(_dumps) | st.binary(max_size=512),
    st.none() | st.integers(-1, 600).map(str) | st.text(alphabet="0123456789x -", max_size=5),
    st.sampled_from(CONTENT_TYPES),
)
@HTTP
def test_any_v2_infer_body_gets_200_or_a_400_error(
    api: asgi.ASGIClient,
    admin_headers: dict[str, str],
    body: bytes,
    header_length: str | None,
    content_type: str | None,
) -> None:
    headers = dict(admin_headers)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    response = api.post(V2_INFER, data=body, headers=headers)
    assert response.status_code in (200, 400), (body[:200], response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    if response.status_code == 400:
        answer = response.json()
        assert list(answer) == ["error"], answer
        assert isinstance(answer["error"], str)
