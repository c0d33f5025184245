"""The model contract: what a model takes (features, with the bounds the API enforces),
what it answers (classes), and the digest that pins the pickle it describes.

A leaf module: the artifact loader, the predictors, training, packaging, the request schemas
and the API's metadata (`/model`, `/v2/models/...`) all read the contract from here, so it
is stated once, in `model.json`.

A manifest comes from training (`python -m service.ml.train`: the Iris forest, with its
held-out metrics and `trained_at`) or from packaging a model fitted elsewhere
(`python -m service model package`: no metrics, `packaged_at`).
"""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

MODEL_FILE = "model.joblib"
MANIFEST_FILE = "model.json"
REQUIRED_METRICS = frozenset({"accuracy", "n_train", "n_test"})
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


def version_for(name: str, sha256: str) -> str:
    """Name a model by its bytes, so equal versions mean identical models."""
    return f"{name}-{sha256[:12]}"


class Feature(BaseModel):
    """One input column and the closed range of values the API accepts for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    minimum: float = Field(allow_inf_nan=False)
    maximum: float = Field(allow_inf_nan=False)
    unit: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Feature:
        if self.minimum > self.maximum:
            raise ValueError(f"feature {self.name}: minimum above maximum")
        return self


class ModelManifest(BaseModel):
    """What was trained, how, and the digest that pins the pickle it describes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    sklearn_version: str
    numpy_version: str
    joblib_version: str
    python_version: str
    features: list[Feature] = Field(min_length=1)
    class_names: list[str] = Field(min_length=2)
    # A typical row, shown in the API's examples.
    example: list[float] | None = None
    # The estimator's class, `module.QualName` (older manifests lack it).
    estimator: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    # Held-out scores: training records them; a packaged model has none.
    metrics: dict[str, float] | None = None
    trained_at: AwareDatetime | None = None
    packaged_at: AwareDatetime | None = None

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        if self.version != version_for(self.name, self.sha256):
            raise ValueError(f"version {self.version!r} does not match sha256 {self.sha256}")
        if self.metrics is not None and (missing := REQUIRED_METRICS - self.metrics.keys()):
            raise ValueError(f"metrics lack {', '.join(sorted(missing))}")
        if self.trained_at is None and self.packaged_at is None:
            raise ValueError("neither trained_at nor packaged_at is set")
        if len(set(self.feature_names)) != len(self.features):
            raise ValueError("feature names repeat")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class names repeat")
        if self.example is not None and len(self.example) != len(self.features):
            raise ValueError("the example row does not have one value per feature")
        return self

    @property
    def n_features(self) -> int:
        return len(self.features)

    def describe(self) -> dict[str, Any]:
        """The manifest as `GET /model` shows it, with the plain name lists clients read."""
        return self.model_dump(mode="json") | {"feature_names": self.feature_names}


_JSON_SCALARS = (bool, int, float, str)


def scalar_hyperparameters(params: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters a manifest records: those whose values are JSON scalars (an
    estimator's `get_params(deep=False)`); nested estimators and arrays are left out."""
    return {
        key: value
        for key, value in params.items()
        if value is None or isinstance(value, _JSON_SCALARS)
    }
