"""The on-disk model artifact: a joblib pickle plus a JSON manifest that vouches for it.

Unpickling runs arbitrary code, so ``load_model`` refuses to unpickle anything the
manifest does not match byte for byte, or that a different scikit-learn wrote. The digest
sits next to the pickle, so it catches corruption and a swapped pickle, not someone able to
rewrite both files: the model directory must stay writable only by whoever trains.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from sklearn.ensemble import RandomForestClassifier

from service.ml.inference import Predictor

FEATURE_NAMES: tuple[str, ...] = ("sepal_length", "sepal_width", "petal_length", "petal_width")
CLASS_NAMES: tuple[str, ...] = ("setosa", "versicolor", "virginica")

MODEL_FILE = "model.joblib"
MANIFEST_FILE = "model.json"
VERSION_PREFIX = "iris-rf-"
REQUIRED_METRICS = frozenset({"accuracy", "n_train", "n_test"})

_CHUNK_BYTES = 1 << 20


def version_for(sha256: str) -> str:
    """Name a model by its bytes, so equal versions mean identical models."""
    return VERSION_PREFIX + sha256[:12]


class ModelManifest(BaseModel):
    """What was trained, how, and the digest that pins the pickle it describes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    sklearn_version: str
    numpy_version: str
    joblib_version: str
    python_version: str
    feature_names: list[str]
    class_names: list[str] = Field(min_length=2)
    hyperparameters: dict[str, Any]
    metrics: dict[str, float]
    trained_at: AwareDatetime

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        if self.version != version_for(self.sha256):
            raise ValueError(f"version {self.version!r} does not match sha256 {self.sha256}")
        missing = REQUIRED_METRICS - self.metrics.keys()
        if missing:
            raise ValueError(f"metrics lack {', '.join(sorted(missing))}")
        return self


class ArtifactError(Exception):
    """A model artifact that must not be served; the message says why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def load_model(model_dir: Path) -> Predictor:
    """Verify the artifact in ``model_dir`` against its manifest, then load it."""
    model_dir = Path(model_dir)
    retrain = f"run `make model` or `python -m service.ml.train --out {model_dir}`"
    if not model_dir.is_dir():
        raise ArtifactError(f"model directory not found at {model_dir}: {retrain}")
    manifest = _read_manifest(model_dir / MANIFEST_FILE, retrain)
    payload = _read_verified(model_dir / MODEL_FILE, manifest, retrain)
    estimator = _unpickle(model_dir / MODEL_FILE, payload, retrain)
    _check_estimator(model_dir / MODEL_FILE, estimator, manifest, retrain)
    try:
        return Predictor(manifest, estimator)
    except ValueError as exc:
        raise ArtifactError(
            f"model artifact {model_dir / MODEL_FILE} is unusable: {exc}: {retrain}"
        ) from exc


def _read_manifest(path: Path, retrain: str) -> ModelManifest:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"model manifest not found at {path}: {retrain}") from None
    except OSError as exc:
        raise ArtifactError(
            f"cannot read model manifest {path}: {exc.strerror}: {retrain}"
        ) from exc
    try:
        manifest = ModelManifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "document"
        raise ArtifactError(
            f"invalid model manifest {path} ({exc.error_count()} error(s), first at {where}: "
            f"{first['msg']}): {retrain}"
        ) from None
    if manifest.feature_names != list(FEATURE_NAMES):
        raise ArtifactError(
            f"model manifest {path} declares features {manifest.feature_names}, "
            f"the service expects {list(FEATURE_NAMES)}: {retrain}"
        )
    return manifest


def _read_verified(path: Path, manifest: ModelManifest, retrain: str) -> bytes:
    """Hash and keep the bytes in one read, so the file cannot change between check and use."""
    digest = hashlib.sha256()
    buffer = bytearray()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK_BYTES):
                digest.update(chunk)
                buffer += chunk
    except FileNotFoundError:
        raise ArtifactError(f"model artifact not found at {path}: {retrain}") from None
    except OSError as exc:
        raise ArtifactError(
            f"cannot read model artifact {path}: {exc.strerror}: {retrain}"
        ) from exc
    actual = digest.hexdigest()
    if not hmac.compare_digest(actual, manifest.sha256):
        raise ArtifactError(
            f"model artifact {path} has sha256 {actual} but its manifest expects "
            f"{manifest.sha256}: it was tampered with or replaced, refusing to load it; {retrain}"
        )
    if manifest.sklearn_version != sklearn.__version__:
        raise ArtifactError(
            f"model artifact {path} was trained with scikit-learn {manifest.sklearn_version} "
            f"but {sklearn.__version__} is installed: {retrain} with this environment"
        )
    return bytes(buffer)


def _unpickle(path: Path, payload: bytes, retrain: str) -> Any:
    try:
        return joblib.load(io.BytesIO(payload))
    except Exception as exc:
        raise ArtifactError(f"cannot unpickle model artifact {path}: {exc!r}: {retrain}") from exc


def _check_estimator(path: Path, estimator: Any, manifest: ModelManifest, retrain: str) -> None:
    if not isinstance(estimator, RandomForestClassifier) or not hasattr(estimator, "estimators_"):
        raise ArtifactError(
            f"model artifact {path} holds {type(estimator).__name__}, "
            f"not a fitted RandomForestClassifier: {retrain}"
        )
    problems = []
    if estimator.n_features_in_ != len(FEATURE_NAMES):
        problems.append(f"{estimator.n_features_in_} features instead of {len(FEATURE_NAMES)}")
    if estimator.n_outputs_ != 1:
        problems.append(f"{estimator.n_outputs_} outputs instead of 1")
    elif not np.array_equal(estimator.classes_, np.arange(len(manifest.class_names))):
        problems.append(
            f"classes {estimator.classes_.tolist()} do not match the manifest's "
            f"{len(manifest.class_names)} class names"
        )
    if problems:
        raise ArtifactError(f"model artifact {path} has {'; '.join(problems)}: {retrain}")
