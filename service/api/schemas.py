"""Request and response bodies. Input is strict: no coercion from strings or booleans, no
NaN or Infinity, no extra keys.

The prediction bodies depend on the model: `PredictionSchemas.for_manifest` builds them from
its manifest (row length, per-feature bounds, examples).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    create_model,
)

from service.ml.manifest import Feature, ModelManifest
from service.rules.accounts import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    USERNAME_PATTERN,
    check_scopes,
)
from service.rules.rates import RATE_PATTERN, Rate
from service.rules.scopes import Scope

Username = Annotated[
    str, StringConstraints(pattern=USERNAME_PATTERN), AfterValidator(lambda v: v.lower())
]
Password = Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)]
# JSON has no enums: a scope arrives as its name (strict mode would want a `Scope` object).
ScopeName = Annotated[Scope, Field(strict=False)]
Scopes = Annotated[
    list[ScopeName], Field(max_length=8), AfterValidator(lambda v: sorted(check_scopes(v)))
]


def _rate(value: str) -> str:
    Rate.parse(value)
    return value


RateText = Annotated[
    str,
    Field(max_length=32, pattern=RATE_PATTERN, examples=["600/minute"]),
    AfterValidator(_rate),
]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Prediction(BaseModel):
    prediction: int
    label: str
    probabilities: dict[str, float]


class PredictResponse(Prediction):
    model_version: str


class BatchPredictResponse(BaseModel):
    predictions: list[Prediction]
    model_version: str


def _row_type(features: list[Feature]) -> Any:
    """A list of exactly one finite number per feature, each within its feature's bounds.

    Validated as a list, so a wrong length is one error at the row; documented per position.
    """
    low = min(feature.minimum for feature in features)
    high = max(feature.maximum for feature in features)
    value = Annotated[float, Field(strict=True, ge=low, le=high, allow_inf_nan=False)]
    positions = tuple(
        Annotated[float, Field(ge=f.minimum, le=f.maximum, title=f.name, description=f.unit)]
        for f in features
    )
    schema = TypeAdapter(tuple[positions]).json_schema()  # type: ignore[valid-type]
    metadata: list[Any] = [
        Field(min_length=len(features), max_length=len(features)),
        WithJsonSchema(schema),
    ]
    if any(f.minimum != low or f.maximum != high for f in features):
        metadata.append(AfterValidator(_per_feature_bounds(features)))
    return Annotated[(list[value], *metadata)]


def _per_feature_bounds(features: list[Feature]) -> Any:
    bounds = [(f.name, f.minimum, f.maximum) for f in features]

    def check(row: list[float]) -> list[float]:
        for (name, low, high), value in zip(bounds, row, strict=True):
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low:g} and {high:g}")
        return row

    return check


def example_row(manifest: ModelManifest) -> list[float]:
    """A valid row for the OpenAPI examples: the manifest's own, or each feature's midpoint."""
    if manifest.example is not None:
        return list(manifest.example)
    return [round((f.minimum + f.maximum) / 2, 3) for f in manifest.features]


def _strict_config(example: JsonValue) -> ConfigDict:
    return ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [example]})


@dataclass(frozen=True, slots=True)
class PredictionSchemas:
    """The prediction request bodies for one model, built from its manifest."""

    request: type[BaseModel]
    batch_request: type[BaseModel]

    @classmethod
    def for_manifest(cls, manifest: ModelManifest) -> PredictionSchemas:
        row = _row_type(manifest.features)
        names = ", ".join(manifest.feature_names)
        first: list[JsonValue] = list(example_row(manifest))
        request = create_model(
            "PredictRequest",
            __config__=_strict_config({"data": first}),
            __doc__=f"One row: {names}.",
            data=(row, ...),
        )
        batch = create_model(
            "BatchPredictRequest",
            __config__=_strict_config({"instances": [first, first]}),
            __doc__=f"Rows, each of {names}.",
            instances=(Annotated[list[row], Field(min_length=1)], ...),  # type: ignore[valid-type]
        )
        return cls(request, batch)


class TokenResponse(BaseModel):
    """RFC 6749 §5.1."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
    refresh_token: str
    scope: str = Field(description="The access token's scopes, space-separated")


class ErrorOut(BaseModel):
    """Every error of this API: `detail` (FastAPI's convention; a list for 422s), with
    `error` and `error_description` where OAuth clients read them."""

    detail: str | list[dict[str, Any]]
    error: str | None = None
    error_description: str | None = None


class OAuthErrorOut(BaseModel):
    """RFC 6749 §5.2 (`detail` repeats the description, as every error of this API has)."""

    error: str
    error_description: str
    detail: str


# RFC 6749 §3.1: an empty parameter counts as absent, so a required one must not be empty.
NonEmpty = Annotated[str, Field(min_length=1)]


class PasswordGrant(BaseModel):
    """RFC 6749 §4.3, form-encoded: starts a session."""

    grant_type: Literal["password"]
    username: NonEmpty
    password: NonEmpty
    scope: str | None = Field(default=None, description="A subset of the user's scopes")
    client_id: str | None = Field(default=None, description="Accepted and ignored")


class RefreshGrant(BaseModel):
    """RFC 6749 §6, form-encoded: rotates a session's refresh token."""

    grant_type: Literal["refresh_token"]
    refresh_token: NonEmpty
    scope: str | None = Field(
        default=None, description="A subset of the grant's scopes, for the new access token"
    )
    client_id: str | None = Field(default=None, description="Accepted and ignored")


class RevokeForm(BaseModel):
    """RFC 7009 §2.1, form-encoded."""

    token: NonEmpty
    token_type_hint: str | None = Field(
        default=None,
        description="access_token or refresh_token, if known; only orders the search",
    )
    client_id: str | None = Field(default=None, description="Accepted and ignored")


class AuthorizationServerMetadata(BaseModel):
    """RFC 8414 §2 (the members this server has)."""

    model_config = ConfigDict(extra="allow")

    issuer: str
    token_endpoint: str
    revocation_endpoint: str
    grant_types_supported: list[str]
    response_types_supported: list[str]
    scopes_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    jwks_uri: str | None = None


class RefreshRequest(StrictModel):
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)]


class LogoutRequest(StrictModel):
    all_sessions: bool = Field(
        default=False, description="End every session of the caller, not only this one"
    )
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        default=None, description="A refresh token of another session of the caller to end too"
    )


class SessionOut(BaseModel):
    sid: str
    created_at: datetime
    last_used_at: datetime = Field(description="The last refresh (created_at before any)")
    expires_at: datetime = Field(description="When it ends unless refreshed first")
    current: bool = Field(description="The session of the token making this request")
    ip: str = Field(description="The client address at login")
    user_agent: str = Field(description="The client's User-Agent at login")


def _default_scopes() -> list[Scope]:
    return [Scope.PREDICT]


class UserCreate(StrictModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"username": "alice", "password": "a long passphrase", "scopes": ["predict"]}  # nosec B105
            ]
        }
    )

    username: Username
    password: Password
    scopes: Scopes = Field(default_factory=_default_scopes)


class UserUpdate(StrictModel):
    disabled: bool | None = None
    password: Password | None = None
    scopes: Scopes | None = None
    rate_limit: RateText | None = Field(
        default=None, description="Per-user prediction limit, e.g. 600/minute; null clears it"
    )


class UserOut(BaseModel):
    username: str
    scopes: list[str]
    disabled: bool


class UserDetail(UserOut):
    created_at: datetime
    rate_limit: str | None


class MessageOut(BaseModel):
    message: str
    docs: str


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str
    checks: dict[str, str]


class NotReadyOut(BaseModel):
    detail: str
    checks: dict[str, str]


class ModelInfo(BaseModel):
    """The artifact's manifest: a trained model has `metrics` and `trained_at`, a packaged
    one (`python -m service model package`) `packaged_at` and no metrics."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    sha256: str
    features: list[Feature]
    feature_names: list[str]
    class_names: list[str]
    estimator: str | None = None
    metrics: dict[str, Any] | None = None
    trained_at: datetime | None = None
    packaged_at: datetime | None = None
