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
from pydantic import ValidationError
from sklearn.ensemble import RandomForestClassifier

from service.ml.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest
from service.ml.predictor import ForestPredictor, Predictor

_CHUNK_BYTES = 1 << 20


class ArtifactError(Exception):
    """A model artifact that must not be served; the message says why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def _retrain(model_dir: Path) -> str:
    return f"run `make model` or `python -m service.ml.train --out {model_dir}`"


def read_manifest(model_dir: Path) -> ModelManifest:
    """The manifest in ``model_dir``: what the model takes and answers (no unpickling)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ArtifactError(f"model directory not found at {model_dir}: {_retrain(model_dir)}")
    return _read_manifest(model_dir / MANIFEST_FILE, _retrain(model_dir))


def load_model(model_dir: Path) -> Predictor:
    """Verify the artifact in ``model_dir`` against its manifest, then load it."""
    model_dir = Path(model_dir)
    retrain = _retrain(model_dir)
    manifest = read_manifest(model_dir)
    payload = _read_verified(model_dir / MODEL_FILE, manifest, retrain)
    estimator = _unpickle(model_dir / MODEL_FILE, payload, retrain)
    _check_estimator(model_dir / MODEL_FILE, estimator, manifest, retrain)
    try:
        return ForestPredictor(manifest, estimator)
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
    if estimator.n_features_in_ != len(manifest.features):
        problems.append(
            f"{estimator.n_features_in_} features but its manifest declares "
            f"{len(manifest.features)}"
        )
    if estimator.n_outputs_ != 1:
        problems.append(f"{estimator.n_outputs_} outputs instead of 1")
    elif not np.array_equal(estimator.classes_, np.arange(len(manifest.class_names))):
        problems.append(
            f"classes {estimator.classes_.tolist()} do not match the manifest's "
            f"{len(manifest.class_names)} class names"
        )
    if problems:
        raise ArtifactError(f"model artifact {path} has {'; '.join(problems)}: {retrain}")
