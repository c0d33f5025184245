"""The on-disk model artifact: a joblib pickle plus a JSON manifest that vouches for it.

Unpickling runs arbitrary code, so ``load_model`` refuses to unpickle anything the
manifest does not match byte for byte, or that a different scikit-learn wrote. The digest
sits next to the pickle, so it catches corruption and a swapped pickle, not someone able to
rewrite both files: the model directory must stay writable only by whoever trains or
packages models, and a packaged pickle must come from someone you trust (packaging unpickles
it too, to check it).

Any fitted scikit-learn classifier with ``predict_proba`` and one column per class of the
manifest is served: random and extra-trees forests by the exact numpy fast path, anything
else through scikit-learn itself (`make_predictor`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from pydantic import ValidationError
from sklearn.base import BaseEstimator, is_classifier
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from service.ml.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest, version_for
from service.ml.predictor import ForestPredictor, Predictor, SklearnPredictor

_CHUNK_BYTES = 1 << 20
# Served by the exact numpy fast path: these classes exactly (a subclass may change
# predict_proba), whose trees ForestPredictor evaluates as scikit-learn does.
FAST_PATH_ESTIMATORS: tuple[type[Any], ...] = (RandomForestClassifier, ExtraTreesClassifier)


class ArtifactError(Exception):
    """A model artifact that must not be served; the message says why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def _retrain(model_dir: Path) -> str:
    return (
        f"run `make model` or `python -m service.ml.train --out {model_dir}` "
        f"(or `python -m service model package MODEL.joblib --out {model_dir}` for your own)"
    )


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
        return make_predictor(manifest, estimator)
    except ValueError as exc:
        raise ArtifactError(
            f"model artifact {model_dir / MODEL_FILE} is unusable: {exc}: {retrain}"
        ) from exc


def make_predictor(manifest: ModelManifest, estimator: Any) -> Predictor:
    """The exact fast path for the forests it knows, scikit-learn itself for the rest."""
    if type(estimator) in FAST_PATH_ESTIMATORS:
        return ForestPredictor(manifest, estimator)
    return SklearnPredictor(manifest, estimator)


def provenance(name: str, payload: bytes, estimator: Any) -> dict[str, str]:
    """The manifest fields that say what was pickled and by what: its name, its content-hash
    version and digest, the estimator class, and the library versions that wrote it (what
    `load_model` checks). Shared by training and packaging."""
    sha256 = hashlib.sha256(payload).hexdigest()
    kind = type(estimator)
    return {
        "name": name,
        "version": version_for(name, sha256),
        "sha256": sha256,
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "joblib_version": joblib.__version__,
        "python_version": platform.python_version(),
        "estimator": f"{kind.__module__}.{kind.__qualname__}",
    }


def write_artifact(out_dir: Path, payload: bytes, manifest: ModelManifest) -> None:
    """Write the pickle and then its manifest into ``out_dir``, each atomically and
    world-readable (the service may run as another user, e.g. in the image)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Model first: a reader racing us sees either the old pair or a digest mismatch, never
    # a manifest vouching for bytes it has not seen.
    _write_atomic(out_dir / MODEL_FILE, payload)
    _write_atomic(out_dir / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode() + b"\n")


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes 0600 files; the service may run as another user (e.g. in the image).
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


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


def estimator_problems(estimator: Any) -> list[str]:
    """Why ``estimator`` cannot be served whatever its manifest says (empty: it can be): it
    must be a fitted scikit-learn classifier with `predict_proba` and one output."""
    name = type(estimator).__name__
    if not (isinstance(estimator, BaseEstimator) and is_classifier(estimator)):
        return [f"{name}, not a scikit-learn classifier"]
    if not hasattr(estimator, "predict_proba"):
        return [f"{name} without predict_proba (e.g. SVC needs probability=True)"]
    try:
        check_is_fitted(estimator)
    except (NotFittedError, TypeError):
        return [f"an unfitted {name}"]
    problems = []
    if getattr(estimator, "n_outputs_", 1) != 1:
        problems.append(f"{estimator.n_outputs_} outputs instead of 1")
    classes = getattr(estimator, "classes_", None)
    if classes is None or np.ndim(classes) != 1 or len(classes) < 2:
        problems.append("no single list of at least two classes (classes_)")
    return problems


def _check_estimator(path: Path, estimator: Any, manifest: ModelManifest, retrain: str) -> None:
    problems = estimator_problems(estimator)
    if not problems:
        n_features = getattr(estimator, "n_features_in_", None)
        if n_features is not None and n_features != manifest.n_features:
            problems.append(
                f"{n_features} features but its manifest declares {manifest.n_features}"
            )
        # The manifest names the classes in `classes_` order, whatever their labels.
        if len(estimator.classes_) != len(manifest.class_names):
            problems.append(
                f"{len(estimator.classes_)} classes but its manifest names "
                f"{len(manifest.class_names)}"
            )
    if problems:
        raise ArtifactError(f"model artifact {path} holds {'; '.join(problems)}: {retrain}")
