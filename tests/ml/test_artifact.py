"""The loader serves only the exact bytes its manifest vouches for, and never unpickles others."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from service.ml.artifact import ArtifactError, load_model
from service.ml.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest, version_for
from service.ml.predictor import ForestPredictor, SklearnPredictor


class _Payload:
    """Unpickling this creates a directory: proof that the loader ran the pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _edit_manifest(model_dir: Path, **changes: Any) -> None:
    path = model_dir / MANIFEST_FILE
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def _replace_model(model_dir: Path, payload: bytes, *, update_manifest: bool) -> None:
    (model_dir / MODEL_FILE).write_bytes(payload)
    if update_manifest:
        sha = hashlib.sha256(payload).hexdigest()
        _edit_manifest(model_dir, sha256=sha, version=version_for("iris-rf", sha))


def _refusal(model_dir: Path) -> str:
    with pytest.raises(ArtifactError) as info:
        load_model(model_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_loads_a_trained_artifact(artifact_dir: Path, manifest: ModelManifest) -> None:
    predictor = load_model(artifact_dir)
    assert isinstance(predictor, ForestPredictor)
    assert predictor.manifest == manifest
    assert predictor.class_names == ("setosa", "versicolor", "virginica")
    assert isinstance(predictor.estimator, RandomForestClassifier)


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    message = _refusal(missing)
    assert f"model directory not found at {missing}" in message
    assert f"python -m service.ml.train --out {missing}" in message
    assert "make model" in message


@pytest.mark.parametrize(
    ("name", "expected"),
    [(MANIFEST_FILE, "model manifest not found"), (MODEL_FILE, "model artifact not found")],
)
def test_missing_file(artifact_copy: Path, name: str, expected: str) -> None:
    (artifact_copy / name).unlink()
    message = _refusal(artifact_copy)
    assert f"{expected} at {artifact_copy / name}" in message
    assert f"python -m service.ml.train --out {artifact_copy}" in message


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[]", b'{"version": "iris-rf-0"}', "\u00e9\n\x00".encode("latin-1")],
)
def test_unparseable_manifest(artifact_copy: Path, content: bytes) -> None:
    (artifact_copy / MANIFEST_FILE).write_bytes(content)
    assert "invalid model manifest" in _refusal(artifact_copy)


@pytest.mark.parametrize(
    "changes",
    [
        {"unexpected": 1},
        {"version": "iris-rf-000000000000"},
        {"sha256": "ABC"},
        {"metrics": {"accuracy": 1.0}},
        {"trained_at": "2024-01-01T00:00:00"},
        {"trained_at": None},
        {"class_names": []},
    ],
    ids=[
        "extra-field",
        "version-not-from-sha",
        "bad-sha",
        "metrics",
        "naive-time",
        "no-time",
        "classes",
    ],
)
def test_invalid_manifest(artifact_copy: Path, changes: dict[str, Any]) -> None:
    _edit_manifest(artifact_copy, **changes)
    assert "invalid model manifest" in _refusal(artifact_copy)


def test_a_manifest_without_metrics_is_valid(artifact_copy: Path) -> None:
    """A packaged model has no held-out metrics: only training records them."""
    _edit_manifest(artifact_copy, metrics=None)
    assert load_model(artifact_copy).manifest.metrics is None


def test_manifest_that_disagrees_with_the_model_on_features(artifact_copy: Path) -> None:
    """The manifest states the API's contract; a model taking other inputs is refused."""
    document = json.loads((artifact_copy / MANIFEST_FILE).read_text())
    _edit_manifest(artifact_copy, features=document["features"][:3], example=None)
    assert "4 features but its manifest declares 3" in _refusal(artifact_copy)


def test_tampered_bytes(artifact_copy: Path) -> None:
    path = artifact_copy / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    message = _refusal(artifact_copy)
    assert "tampered with or replaced" in message
    assert str(path) in message


def test_sklearn_version_mismatch(artifact_copy: Path) -> None:
    _edit_manifest(artifact_copy, sklearn_version="0.0.1")
    message = _refusal(artifact_copy)
    assert "trained with scikit-learn 0.0.1" in message
    assert "is installed" in message


def test_payload_would_run_if_unpickled(tmp_path: Path) -> None:
    """Control for the tests below: the payload really does act when unpickled."""
    marker = tmp_path / "marker"
    path = tmp_path / "payload.joblib"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    joblib.load(path)
    assert marker.exists()


def test_replaced_pickle_is_never_unpickled(artifact_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    _replace_model(artifact_copy, pickle.dumps(_Payload(marker)), update_manifest=False)
    assert "tampered with or replaced" in _refusal(artifact_copy)
    assert not marker.exists()


def test_pickle_from_other_sklearn_is_never_unpickled(artifact_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    _replace_model(artifact_copy, pickle.dumps(_Payload(marker)), update_manifest=True)
    _edit_manifest(artifact_copy, sklearn_version="0.0.1")
    assert "trained with scikit-learn 0.0.1" in _refusal(artifact_copy)
    assert not marker.exists()


def _dumped(obj: object) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


def _forest(X: Any, y: Any) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)


_X, _Y = load_iris(return_X_y=True)
WRONG_OBJECTS: dict[str, tuple[Callable[[], object], str]] = {
    "dict": (lambda: {"not": "a model"}, "holds dict, not a scikit-learn classifier"),
    "regressor": (
        lambda: RandomForestRegressor(n_estimators=2).fit(_X, _Y),
        "holds RandomForestRegressor, not a scikit-learn classifier",
    ),
    "no-predict-proba": (lambda: SVC().fit(_X, _Y), "SVC without predict_proba"),
    "unfitted": (RandomForestClassifier, "holds an unfitted RandomForestClassifier"),
    "unfitted-other": (LogisticRegression, "holds an unfitted LogisticRegression"),
    "three-features": (lambda: _forest(_X[:, :3], _Y), "3 features but its manifest declares 4"),
    "two-classes": (
        lambda: _forest(_X[_Y < 2], _Y[_Y < 2]),
        "2 classes but its manifest names 3",
    ),
    "two-outputs": (
        lambda: _forest(_X, np.stack([_Y, _Y], axis=1)),
        "2 outputs instead of 1",
    ),
}


@pytest.mark.parametrize("case", sorted(WRONG_OBJECTS))
def test_wrong_object_is_refused(artifact_copy: Path, case: str) -> None:
    build, expected = WRONG_OBJECTS[case]
    _replace_model(artifact_copy, _dumped(build()), update_manifest=True)
    assert expected in _refusal(artifact_copy)


SERVED_OBJECTS: dict[str, tuple[Callable[[], object], type[object]]] = {
    "extra-trees": (
        lambda: ExtraTreesClassifier(n_estimators=5, random_state=0).fit(_X, _Y),
        ForestPredictor,
    ),
    # Any labels: the manifest names the classes in classes_ order.
    "string-classes": (
        lambda: _forest(_X, np.array(["setosa", "versicolor", "virginica"])[_Y]),
        ForestPredictor,
    ),
    "other-labels": (lambda: _forest(_X, _Y * 10 + 7), ForestPredictor),
    "logistic-regression": (lambda: LogisticRegression(max_iter=500).fit(_X, _Y), SklearnPredictor),
    "pipeline": (
        lambda: make_pipeline(StandardScaler(), LogisticRegression()).fit(_X, _Y),
        SklearnPredictor,
    ),
    # A subclass may change predict_proba: scikit-learn serves it, not the fast path.
    "forest-subclass": (lambda: _ForestSubclass(n_estimators=3).fit(_X, _Y), SklearnPredictor),
}


class _ForestSubclass(RandomForestClassifier):  # type: ignore[misc]  # sklearn: no stubs
    pass


@pytest.mark.parametrize("case", sorted(SERVED_OBJECTS))
def test_any_fitted_classifier_is_served(artifact_copy: Path, case: str) -> None:
    build, kind = SERVED_OBJECTS[case]
    estimator: Any = build()
    _replace_model(artifact_copy, _dumped(estimator), update_manifest=True)
    predictor = load_model(artifact_copy)
    assert type(predictor) is kind
    assert predictor.runs_inline is (kind is ForestPredictor)
    np.testing.assert_array_equal(predictor.predict_proba(_X), estimator.predict_proba(_X))


def test_corrupt_pickle_with_matching_digest(artifact_copy: Path) -> None:
    _replace_model(artifact_copy, b"not a pickle at all", update_manifest=True)
    assert "cannot unpickle model artifact" in _refusal(artifact_copy)
