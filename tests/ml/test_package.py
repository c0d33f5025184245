"""`python -m service model package`: a classifier fitted elsewhere becomes an artifact the
service loads with its usual checks, with a manifest from the command line or a YAML spec."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import sklearn
from sklearn.datasets import load_iris, load_wine
from sklearn.ensemble import ExtraTreesClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from service.ml.artifact import load_model
from service.ml.manifest import MANIFEST_FILE, MODEL_FILE
from service.ml.package import (
    UNBOUNDED,
    PackageError,
    PackageSpec,
    package,
    read_spec,
    spec_from_arguments,
)
from service.ml.predictor import ForestPredictor, SklearnPredictor

ROOT = Path(__file__).resolve().parents[2]
WINE = load_wine()
WINE_FEATURES = ",".join(WINE.feature_names)
IRIS_X, IRIS_Y = load_iris(return_X_y=True)


def _dump(estimator: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, path)
    return path


@pytest.fixture(scope="module")
def wine_forest() -> ExtraTreesClassifier:
    return ExtraTreesClassifier(n_estimators=30, random_state=0).fit(WINE.data, WINE.target)


def _spec(**options: Any) -> PackageSpec:
    arguments: dict[str, Any] = {
        "name": None,
        "features": None,
        "classes": None,
        "bounds": [],
        "example": None,
    }
    return spec_from_arguments(**(arguments | options))


def test_packages_a_wine_forest(wine_forest: ExtraTreesClassifier, tmp_path: Path) -> None:
    source = _dump(wine_forest, tmp_path / "in" / "Wine ET.joblib")
    spec = _spec(
        features=WINE_FEATURES,
        classes="barolo,grignolino,barbera",
        bounds=["0:2000", "alcohol=10:16"],
        example=",".join(map(str, WINE.data[0])),
    )
    done = package(source, spec, tmp_path / "out")
    manifest = done.manifest
    payload = source.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    assert (tmp_path / "out" / MODEL_FILE).read_bytes() == payload  # the bytes as they were
    assert manifest.name == "wine-et"
    assert manifest.version == f"wine-et-{digest[:12]}"
    assert manifest.sha256 == digest
    assert manifest.sklearn_version == sklearn.__version__
    assert manifest.feature_names == list(WINE.feature_names)
    assert (manifest.features[0].minimum, manifest.features[0].maximum) == (10, 16)
    assert {(f.minimum, f.maximum) for f in manifest.features[1:]} == {(0, 2000)}
    assert manifest.class_names == ["barolo", "grignolino", "barbera"]
    assert manifest.example == WINE.data[0].tolist()
    assert manifest.estimator == "sklearn.ensemble._forest.ExtraTreesClassifier"
    assert manifest.hyperparameters["n_estimators"] == 30
    assert manifest.metrics is None
    assert manifest.trained_at is None
    assert manifest.packaged_at is not None
    assert done.fast_path
    assert done.unbounded == []
    written = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    assert written["metrics"] is None
    predictor = load_model(tmp_path / "out")
    assert isinstance(predictor, ForestPredictor)
    np.testing.assert_array_equal(
        predictor.predict_proba(WINE.data), wine_forest.predict_proba(WINE.data)
    )


def test_a_pipeline_goes_through_sklearn(tmp_path: Path) -> None:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(IRIS_X, IRIS_Y)
    source = _dump(model, tmp_path / "model.joblib")
    done = package(source, _spec(features="a,b,c,d", bounds=["0:10"]))
    assert done.out_dir == tmp_path  # beside the model, which already has the right name
    assert not done.fast_path
    assert done.manifest.estimator == "sklearn.pipeline.Pipeline"
    assert done.manifest.class_names == ["0", "1", "2"]  # str(classes_) by default
    predictor = load_model(tmp_path)
    assert isinstance(predictor, SklearnPredictor)
    np.testing.assert_array_equal(predictor.predict_proba(IRIS_X), model.predict_proba(IRIS_X))


def test_without_bounds_any_finite_float32_is_accepted(tmp_path: Path) -> None:
    source = _dump(LogisticRegression(max_iter=500).fit(IRIS_X, IRIS_Y), tmp_path / "lr.joblib")
    done = package(source, _spec(features="a,b,c,d"), tmp_path / "out")
    assert done.unbounded == ["a", "b", "c", "d"]
    assert {(f.minimum, f.maximum) for f in done.manifest.features} == {UNBOUNDED}


def test_names_come_from_the_estimator_when_it_has_them(tmp_path: Path) -> None:
    labels = np.array(["bad", "good", "so-so"])[IRIS_Y]
    model = LogisticRegression(max_iter=500).fit(IRIS_X, labels)
    model.feature_names_in_ = np.array(["w", "x", "y", "z"], dtype=object)  # as from a DataFrame
    source = _dump(model, tmp_path / "named.joblib")
    done = package(source, _spec(bounds=["0:10"]), tmp_path / "out")
    assert done.manifest.feature_names == ["w", "x", "y", "z"]
    assert done.manifest.class_names == ["bad", "good", "so-so"]
    with pytest.raises(PackageError, match="fitted with the feature names w, x, y, z"):
        package(source, _spec(features="a,b,c,d"), tmp_path / "out2")


def test_a_yaml_spec_beside_the_model_and_the_command_line_over_it(
    wine_forest: ExtraTreesClassifier, tmp_path: Path
) -> None:
    source = _dump(wine_forest, tmp_path / "wine.joblib")
    features = [
        {"name": WINE.feature_names[0], "minimum": 11, "maximum": 15, "unit": "% vol"},
        *WINE.feature_names[1:],
    ]
    spec_path = tmp_path / "wine.yaml"
    spec_path.write_text(
        "name: wine-from-yaml\n"
        f"features: {json.dumps(features)}\n"
        "classes: [one, two, three]\n"
        "bounds: [0, 1700]\n"
    )
    spec = read_spec(spec_path)
    done = package(source, spec.overridden_by(_spec(name="wine-cli")), tmp_path / "out")
    manifest = done.manifest
    assert manifest.name == "wine-cli"
    assert manifest.features[0].unit == "% vol"
    assert (manifest.features[0].minimum, manifest.features[0].maximum) == (11, 15)
    assert (manifest.features[-1].minimum, manifest.features[-1].maximum) == (0, 1700)
    assert manifest.class_names == ["one", "two", "three"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("features: 3\n", "features must be a list"),
        ("colour: red\n", "unknown keys colour"),
        ("bounds: [5, 1]\n", "minimum is above the maximum"),
        ("bounds: [0, .inf]\n", "must be finite"),
        ("features: [{name: a, minimum: 1}]\n", "two numbers"),
        ("features: [{name: a, step: 1}]\n", "unknown feature keys step"),
        ("- a\n- b\n", "expected a mapping"),
        ("name: [unclosed\n", "cannot read"),
    ],
)
def test_bad_yaml_specs(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(PackageError, match=message):
        read_spec(path)


def _refusal(source: Path, spec: PackageSpec, out: Path | None = None) -> str:
    with pytest.raises(PackageError) as info:
        package(source, spec, out)
    return str(info.value)


def test_what_cannot_be_packaged(wine_forest: ExtraTreesClassifier, tmp_path: Path) -> None:
    wine = _dump(wine_forest, tmp_path / "wine.joblib")
    names = {"features": WINE_FEATURES}
    cases: list[tuple[Path, PackageSpec, str]] = [
        (wine, _spec(), "name the model's 13 features"),
        (wine, _spec(features="a,b,c"), "3 feature names for a model of 13 features"),
        (
            wine,
            _spec(**names, classes="x,y"),
            "2 class names for a model of 3 classes (its classes_, in order: 0, 1, 2)",
        ),
        (wine, _spec(**names, name="Not A Name!"), "model name 'Not A Name!'"),
        (wine, _spec(**names, bounds=["nobody=0:1"]), "unknown features: nobody"),
        (wine, _spec(**names, example="1,2"), "the example has 2 values for 13 features"),
        (
            _dump(ExtraTreesClassifier(), tmp_path / "unfitted.joblib"),
            _spec(**names),
            "an unfitted ExtraTreesClassifier",
        ),
        (
            _dump(
                RandomForestRegressor(n_estimators=2).fit(IRIS_X, IRIS_Y), tmp_path / "reg.joblib"
            ),
            _spec(features="a,b,c,d"),
            "RandomForestRegressor, not a scikit-learn classifier",
        ),
        (tmp_path / "missing.joblib", _spec(), "cannot read"),
    ]
    (tmp_path / "junk.joblib").write_bytes(b"not a pickle")
    cases.append((tmp_path / "junk.joblib", _spec(), "cannot unpickle"))
    for source, spec, message in cases:
        assert message in _refusal(source, spec, tmp_path / "out"), message
    assert not (tmp_path / "out").exists()


def test_bounds_syntax() -> None:
    assert _spec(bounds=["-5:5.5"]).bounds == (-5.0, 5.5)
    assert _spec(bounds=["a=-1:1"]).feature_bounds == {"a": (-1.0, 1.0)}
    for bad in ("5", "a:b", "1:inf", "2:1", "nan:1"):
        with pytest.raises(PackageError):
            _spec(bounds=[bad])


def test_another_model_in_the_directory_is_not_overwritten(
    wine_forest: ExtraTreesClassifier, tmp_path: Path
) -> None:
    _dump(LogisticRegression(max_iter=500).fit(IRIS_X, IRIS_Y), tmp_path / MODEL_FILE)
    source = _dump(wine_forest, tmp_path / "wine.joblib")
    assert "already holds another model" in _refusal(source, _spec(features=WINE_FEATURES))
    # The same bytes again (packaging twice) are fine.
    done = package(source, _spec(features=WINE_FEATURES), tmp_path / "out")
    assert package(source, _spec(features=WINE_FEATURES), done.out_dir).manifest.sha256 == (
        done.manifest.sha256
    )


def test_a_pickle_from_another_scikit_learn_is_refused(
    wine_forest: ExtraTreesClassifier, tmp_path: Path
) -> None:
    source = _dump(wine_forest, tmp_path / "wine.joblib")
    current = sklearn.__version__.encode()
    older = b"0.0.0"[: len(current)].ljust(len(current), b"0")
    payload = source.read_bytes()
    assert current in payload
    source.write_bytes(payload.replace(current, older))
    message = _refusal(source, _spec(features=WINE_FEATURES), tmp_path / "out")
    assert f"pickled by scikit-learn {older.decode()}" in message
    assert f"service runs {sklearn.__version__}" in message


def test_command_line(wine_forest: ExtraTreesClassifier, tmp_path: Path) -> None:
    source = _dump(wine_forest, tmp_path / "wine.joblib")
    (tmp_path / "wine.yml").write_text("classes: [barolo, grignolino, barbera]\n")
    command = [sys.executable, "-m", "service", "model", "package", str(source)]
    done = subprocess.run(
        [*command, "--features", WINE_FEATURES, "--bounds=0:2000", "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = load_model(tmp_path / "out").manifest
    assert manifest.class_names == ["barolo", "grignolino", "barbera"]  # from wine.yml
    assert f"packaged {manifest.version}" in done.stdout
    assert "exact fast path" in done.stdout
    assert f"MODEL_DIR={tmp_path / 'out'} make run" in done.stdout
    refused = subprocess.run(
        [*command, "--features", "a,b"], cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=False, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: 2 feature names for a model of 13 features")
