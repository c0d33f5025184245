"""Schemathesis over every operation of the app's own OpenAPI schema, with an admin token.

Every response must be < 500, match its documented schema and content type, carry a
status the schema documents (route-specific ones; see GENERIC_STATUSES), and follow the
contract's error shape. Schema-invalid requests must be refused with a 4xx, schema-valid
ones accepted, except for the one rule JSON Schema cannot state (UNDECLARED_RULES).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jsonschema_rs
import pytest
import redis as sync_redis
import schemathesis
from jose import jwt
from schemathesis import Case, CheckContext, Response, checks
from schemathesis.core.parameters import ParameterLocation
from schemathesis.python import asgi

from service.infra.keys import USERS_SET, session_key, user_key
from service.main import create_app
from tests.fuzz.conftest import fuzz_examples, fuzz_hypothesis_settings
from tests.support.auth import bearer, login_sync
from tests.support.settings import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    USER_PASSWORD,
    make_settings,
    trained_model_dir,
)

# The schema is needed at import time (pytest parametrizes by operation before any fixture
# runs), and building it needs no Redis: an app that is never started has the same routes.
# schemathesis' fixture-based lazy schema is not an option: it reads `Node._nodeid`, which
# pytest 9 removed. `test_schema_is_the_served_one` checks the two schemas are the same.
_OFFLINE_APP = create_app(make_settings("redis://127.0.0.1:1/0", trained_model_dir()))
OPENAPI: dict[str, Any] = _OFFLINE_APP.openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)
BASE_URL = "http://testserver"
FuzzCase = Case[Any]
TARGET_USER = "fuzz-target"

# (method, path template) -> body fields whose rules the schema does not state, so a
# schema-valid value can be refused with 422.
UNDECLARED_RULES: dict[tuple[str, str], frozenset[str]] = {
    # password: "must not equal the username" cannot be said in JSON Schema at all.
    ("POST", "/users"): frozenset({"password"}),
    ("PATCH", "/users/{username}"): frozenset({"password"}),
}
OAUTH_ENDPOINTS = frozenset({"/token", "/revoke"})
GRANT_ENDPOINTS = frozenset({"/token", "/token/refresh"})
# The Open Inference Protocol's operations: errors are {"error": "..."} and a bad request is
# a 400. Its infer body has rules no JSON Schema states (element count = product of the
# shape, the model's own shape, datatype and bounds): a schema-valid body may be a 400.
V2_PREFIX = "/v2"


def _v2_infer(path: str) -> bool:
    return path.startswith(V2_PREFIX + "/models/") and path.endswith("/infer")


def _key(case: FuzzCase) -> tuple[str, str]:
    return case.operation.method.upper(), case.operation.path


def accepts_valid_data(ctx: CheckContext, response: Response, case: FuzzCase) -> bool | None:
    """positive_data_acceptance, minus 422s that only concern UNDECLARED_RULES fields, and
    minus the token endpoints' refusals of well-formed but wrong grants (RFC 6749 §5.2
    answers wrong credentials and dead refresh tokens with 400, where other routes use 401)."""
    refused_grant = response.status_code == 400 and case.operation.path in GRANT_ENDPOINTS
    if refused_grant and response.json().get("error") in ("invalid_grant", "invalid_scope"):
        return None
    if response.status_code == 400 and _v2_infer(case.operation.path):
        return None
    known = UNDECLARED_RULES.get(_key(case))
    if known and response.status_code == 422:
        errors = response.json().get("detail", [])
        if isinstance(errors, list) and all(
            isinstance(e, dict) and e.get("loc", [None])[-1] in known for e in errors
        ):
            return None
    outcome: bool | None = checks.positive_data_acceptance(ctx, response, case)
    return outcome


def allow_header(ctx: CheckContext, response: Response, case: FuzzCase) -> bool | None:
    outcome: bool | None = checks.allow_header_conformance(ctx, response, case)
    return outcome


def contract_errors(ctx: CheckContext, response: Response, case: FuzzCase) -> bool | None:
    """The contract's error shape: JSON `{"detail": ...}` (under /v2 exactly `{"error":
    "..."}`, and never a 422); 401 says `WWW-Authenticate: Bearer`, or at the OAuth
    endpoints `Basic` with an RFC 6749 §5.2 body; 429 says when to retry."""
    status = response.status_code
    if status < 400:
        return None
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), status
    body = response.json()
    assert isinstance(body, dict), body
    if case.operation.path.startswith(V2_PREFIX):
        assert list(body) == ["error"], body
        assert isinstance(body["error"], str), body
        assert status != 422, body
    else:
        assert "detail" in body, body
    oauth = case.operation.path in OAUTH_ENDPOINTS
    if oauth and status in (400, 401, 429):
        assert {"error", "error_description"} <= body.keys(), body
    if status == 401:
        scheme = "Basic" if oauth else "Bearer"
        assert response.headers.get("www-authenticate", [""])[0].startswith(scheme), body
    if status == 429:
        assert response.headers.get("retry-after"), body
    return None


CHECKS: list[Callable[[CheckContext, Response, FuzzCase], bool | None]] = [
    checks.not_a_server_error,
    checks.response_schema_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
    checks.ignored_auth,
    checks.status_code_conformance,
    accepts_valid_data,
    allow_header,
    checks.unsupported_method,
    checks.missing_required_header,
    contract_errors,
]


class AdminSession:
    """The admin's bearer token, kept valid across examples that may disable, delete,
    re-password or log out the admin.

    Before each example the admin's stored record is put back as the lifespan created it
    (same token version, so earlier tokens of it work again), and when an example ended the
    token's session (logout, revocation, a session deleted, a password change), a fresh one
    is fetched. Nothing is excluded from the fuzzing, destructive calls on the admin's own
    name included.
    """

    def __init__(self, api: asgi.ASGIClient, redis: sync_redis.Redis) -> None:
        self.api = api
        self.redis = redis
        self.record: Mapping[Any, Any] = redis.hgetall(user_key(ADMIN_USERNAME))
        assert self.record, "the lifespan did not create the admin"
        self.token = login_sync(api, ADMIN_USERNAME, ADMIN_PASSWORD)["access_token"]

    def headers(self) -> dict[str, str]:
        with self.redis.pipeline() as pipe:
            pipe.delete(user_key(ADMIN_USERNAME))
            pipe.hset(user_key(ADMIN_USERNAME), mapping=self.record)
            pipe.sadd(USERS_SET, ADMIN_USERNAME)
            pipe.execute()
        sid = jwt.get_unverified_claims(self.token)["sid"]
        if not self.redis.exists(session_key(ADMIN_USERNAME, sid)):
            self.token = login_sync(self.api, ADMIN_USERNAME, ADMIN_PASSWORD)["access_token"]
        return bearer(self.token)


@pytest.fixture(scope="module")
def admin(api: asgi.ASGIClient, fuzz_redis: sync_redis.Redis) -> AdminSession:
    return AdminSession(api, fuzz_redis)


def test_schema_is_the_served_one(api: asgi.ASGIClient) -> None:
    served = api.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == OPENAPI


@schema.parametrize()
@fuzz_hypothesis_settings()
def test_api(case: FuzzCase, api: asgi.ASGIClient, admin: AdminSession) -> None:
    """Every operation, every phase (examples, coverage, fuzzing), with an admin token."""
    case.call_and_validate(base_url=BASE_URL, session=api, headers=admin.headers(), checks=CHECKS)


def _ensure_target(api: asgi.ASGIClient, headers: dict[str, str]) -> None:
    body = {"username": TARGET_USER, "password": USER_PASSWORD, "scopes": ["predict"]}
    response = api.post("/users", json=body, headers=headers)
    assert response.status_code in (201, 409), response.text


@schema.include(path_regex=r"\{username\}").parametrize()
@fuzz_hypothesis_settings()
def test_user_operations_on_an_existing_user(
    case: FuzzCase, api: asgi.ASGIClient, admin: AdminSession
) -> None:
    """The `{username}` operations again, aimed at a user that exists, so PATCH bodies reach
    the store instead of stopping at 404."""
    headers = admin.headers()
    _ensure_target(api, headers)
    if case.meta is None or not case.meta.is_negative_at(ParameterLocation.PATH):
        case.path_parameters = {**(case.path_parameters or {}), "username": TARGET_USER}
    case.call_and_validate(base_url=BASE_URL, session=api, headers=headers, checks=CHECKS)


# --- The schema and the app agree on what is invalid, and on the methods of a path.


def _schema_accepts(component: str, body: dict[str, Any]) -> bool:
    document = {"$ref": f"#/components/schemas/{component}", "components": OPENAPI["components"]}
    return jsonschema_rs.validator_for(document).is_valid(body)


@pytest.mark.parametrize(
    ("method", "path", "component", "body"),
    [
        (
            "POST",
            "/users",
            "UserCreate",
            {"username": "fuzz-scope", "password": USER_PASSWORD, "scopes": ["superuser"]},
        ),
        ("PATCH", f"/users/{TARGET_USER}", "UserUpdate", {"scopes": ["superuser"]}),
        ("PATCH", f"/users/{TARGET_USER}", "UserUpdate", {"rate_limit": "often"}),
    ],
)
def test_schema_invalid_bodies_are_refused_by_the_schema_too(
    api: asgi.ASGIClient,
    admin: AdminSession,
    method: str,
    path: str,
    component: str,
    body: dict[str, Any],
) -> None:
    """What the app refuses as 422 (unknown scope, rate syntax), the published schema
    refuses as well: clients can validate before they send."""
    headers = admin.headers()
    _ensure_target(api, headers)
    response = api.request(method, path, json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert not _schema_accepts(component, body)


@pytest.mark.parametrize("path", ["/users", "/users/{username}"])
def test_405_allow_lists_every_method(api: asgi.ASGIClient, path: str) -> None:
    url = path.replace("{username}", TARGET_USER)
    response = api.options(url)
    assert response.status_code == 405
    allowed = {m.strip().upper() for m in response.headers["allow"].split(",")}
    declared = {m.upper() for m in OPENAPI["paths"][path]}
    assert declared <= allowed, (declared, allowed)


# --- Stateful: sequences that follow the schema's links (a new user -> update, delete,
# revoke its tokens, list and end its sessions; a session listing -> end a session).


def test_linked_operations_in_sequence(api: asgi.ASGIClient, admin: AdminSession) -> None:
    """schemathesis' state machine walks the OpenAPI links with every check, the stateful
    ones (use after free, resource availability) included."""
    machine: Any = schema.as_state_machine()

    class Workflow(machine):  # type: ignore[misc]
        def get_call_kwargs(self, case: FuzzCase) -> dict[str, Any]:
            return {"base_url": BASE_URL, "session": api, "headers": admin.headers()}

        def validate_response(self, response: Response, case: FuzzCase, **kwargs: Any) -> None:
            case.validate_response(response, checks=STATEFUL_CHECKS)

    Workflow.run(settings=fuzz_hypothesis_settings(examples=max(5, fuzz_examples() // 2)))


STATEFUL_CHECKS = [*CHECKS, checks.use_after_free, checks.ensure_resource_availability]
