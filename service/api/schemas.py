"""Request and response bodies. Input is strict: no coercion from strings or booleans, no
NaN or Infinity, no extra keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from service.core.config import RATE_PATTERN, RateSpec
from service.core.users import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    USERNAME_PATTERN,
    check_scopes,
)

FEATURE_MIN_CM = 0.0
FEATURE_MAX_CM = 100.0

Measurement = Annotated[
    float,
    Field(strict=True, ge=FEATURE_MIN_CM, le=FEATURE_MAX_CM, allow_inf_nan=False),
]
Row = Annotated[list[Measurement], Field(min_length=4, max_length=4)]

Username = Annotated[
    str, StringConstraints(pattern=USERNAME_PATTERN), AfterValidator(lambda v: v.lower())
]
Password = Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)]
Scope = Literal["predict", "admin"]
Scopes = Annotated[
    list[Scope], Field(max_length=8), AfterValidator(lambda v: sorted(check_scopes(v)))
]


def _rate(value: str) -> str:
    RateSpec.parse(value)
    return value


RateText = Annotated[
    str,
    Field(max_length=32, pattern=RATE_PATTERN, examples=["600/minute"]),
    AfterValidator(_rate),
]

EXAMPLE_ROW: list[JsonValue] = [5.1, 3.5, 1.4, 0.2]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PredictRequest(StrictModel):
    """One flower: sepal length, sepal width, petal length, petal width, in centimetres."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": EXAMPLE_ROW}]})

    data: Row


class BatchPredictRequest(StrictModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"instances": [EXAMPLE_ROW, [6.7, 3.0, 5.2, 2.3]]}]}
    )

    instances: Annotated[list[Row], Field(min_length=1)]


class Prediction(BaseModel):
    prediction: int
    label: str
    probabilities: dict[str, float]


class PredictResponse(Prediction):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "prediction": 0,
                    "label": "setosa",
                    "probabilities": {"setosa": 1.0, "versicolor": 0.0, "virginica": 0.0},
                    "model_version": "iris-rf-0123456789ab",
                }
            ]
        }
    )

    model_version: str


class BatchPredictResponse(BaseModel):
    predictions: list[Prediction]
    model_version: str


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
    refresh_token: str


class RefreshRequest(StrictModel):
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)]


class LogoutRequest(StrictModel):
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)] | None = None


def _default_scopes() -> list[Scope]:
    return ["predict"]


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


class ModelInfo(BaseModel):
    """The artifact's manifest, as trained."""

    model_config = ConfigDict(extra="allow")

    version: str
    sha256: str
    feature_names: list[str]
    class_names: list[str]
    metrics: dict[str, Any]
    trained_at: datetime
