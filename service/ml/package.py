"""Package a classifier fitted elsewhere as an artifact the service verifies and serves:
`python -m service model package MODEL.joblib --features ... --classes ... [--bounds ...]`.

The pickle's bytes are kept as they are (the digest covers exactly them); the manifest
written beside them names the model, derives its version from that digest, states the
features with the bounds the API enforces, the class names (in the estimator's `classes_`
order, whatever its labels), the library versions and the estimator's hyper-parameters.
Packaged models have no held-out metrics: the service never sees the data they were fitted
on.

What the command line does not say can come from a small YAML file beside the model (same
name, `.yaml` or `.yml`) or given with `--spec`; the command line wins over it:

    name: wine-et
    features:                 # in the order of the estimator's columns
      - {name: alcohol, minimum: 10, maximum: 16, unit: "% vol"}
      - malic_acid            # a plain name takes the default bounds below
    classes: [barolo, grignolino, barbera]
    bounds: [0, 2000]         # the default bounds: [min, max]
    example: [13.2, 1.8, ...] # a typical row, shown in the API's examples

Without bounds, a feature accepts any finite float32 value (the command says so).

Unpickling runs code: package only pickles you trust. The model is unpickled here with the
installed scikit-learn; a pickle written by another version is refused, since the service
would refuse it too.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from pydantic import ValidationError
from sklearn.exceptions import InconsistentVersionWarning

from service.ml.artifact import (
    FAST_PATH_ESTIMATORS,
    estimator_problems,
    load_model,
    make_predictor,
    provenance,
    write_artifact,
)
from service.ml.manifest import (
    MODEL_FILE,
    NAME_PATTERN,
    Feature,
    ModelManifest,
    scalar_hyperparameters,
)

# The widest bounds a feature can have: every finite float32 (the forest compares in float32).
FLOAT32_MAX = float(np.finfo(np.float32).max)
UNBOUNDED = (-FLOAT32_MAX, FLOAT32_MAX)
SPEC_SUFFIXES = (".yaml", ".yml")


class PackageError(Exception):
    """A model that cannot be packaged; the message says why and what to change."""


@dataclass(frozen=True)
class FeatureSpec:
    """A feature as the spec gives it: a name, and bounds and a unit when it says them."""

    name: str
    bounds: tuple[float, float] | None = None
    unit: str | None = None


@dataclass
class PackageSpec:
    """What the manifest says beyond what the estimator itself knows."""

    name: str | None = None
    features: list[FeatureSpec] | None = None
    classes: list[str] | None = None
    bounds: tuple[float, float] | None = None
    feature_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    example: list[float] | None = None

    def overridden_by(self, other: PackageSpec) -> PackageSpec:
        """This spec with every field `other` sets replaced (the command line over YAML)."""
        return PackageSpec(
            name=other.name or self.name,
            features=other.features or self.features,
            classes=other.classes or self.classes,
            bounds=other.bounds or self.bounds,
            feature_bounds=self.feature_bounds | other.feature_bounds,
            example=other.example or self.example,
        )


@dataclass(frozen=True)
class Packaged:
    manifest: ModelManifest
    out_dir: Path
    fast_path: bool
    unbounded: list[str]


def parse_bounds(text: str) -> tuple[float, float]:
    """`MIN:MAX` (`0:100`, `-5:5.5`) as a pair of finite floats, MIN <= MAX."""
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return _bounds([float(low), float(high)], f"bounds {text!r}")
    except ValueError:
        raise PackageError(f"bounds must be MIN:MAX, got {text!r}") from None


def _bounds(values: Sequence[Any], what: str) -> tuple[float, float]:
    try:
        low, high = (float(value) for value in values)
    except (TypeError, ValueError):
        raise PackageError(f"{what} must be two numbers, [min, max]") from None
    if not (np.isfinite(low) and np.isfinite(high)):
        raise PackageError(f"{what} must be finite")
    if low > high:
        raise PackageError(f"{what}: the minimum is above the maximum")
    return low, high


def read_spec(path: Path) -> PackageSpec:
    """A YAML spec (see the module doc)."""
    import yaml  # type: ignore[import-untyped]  # PyYAML: a uvicorn[standard] dependency

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PackageError(f"cannot read {path}: {exc}") from exc
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise PackageError(f"{path}: expected a mapping of name, features, classes, ...")
    unknown = set(document) - {"name", "features", "classes", "bounds", "example"}
    if unknown:
        raise PackageError(f"{path}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    spec = PackageSpec(name=_optional_str(document.get("name"), path, "name"))
    if (features := document.get("features")) is not None:
        spec.features = [_feature(item, path) for item in _sequence(features, path, "features")]
    if (classes := document.get("classes")) is not None:
        spec.classes = [str(item) for item in _sequence(classes, path, "classes")]
    if (bounds := document.get("bounds")) is not None:
        spec.bounds = _bounds(_sequence(bounds, path, "bounds"), f"{path}: bounds")
    if (example := document.get("example")) is not None:
        try:
            spec.example = [float(v) for v in _sequence(example, path, "example")]
        except (TypeError, ValueError):
            raise PackageError(f"{path}: example must be a list of numbers") from None
    return spec


def _optional_str(value: Any, path: Path, key: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise PackageError(f"{path}: {key} must be a string")


def _sequence(value: Any, path: Path, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise PackageError(f"{path}: {key} must be a list")
    return value


def _feature(item: Any, path: Path) -> FeatureSpec:
    if isinstance(item, str):
        return FeatureSpec(item)
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        raise PackageError(f"{path}: each feature is a name or {{name, minimum, maximum, unit}}")
    unknown = set(item) - {"name", "minimum", "maximum", "unit"}
    if unknown:
        raise PackageError(f"{path}: unknown feature keys {', '.join(sorted(map(str, unknown)))}")
    name = item["name"]
    bounds = None
    if "minimum" in item or "maximum" in item:
        what = f"{path}: feature {name!r}"
        bounds = _bounds([item.get("minimum"), item.get("maximum")], what)
    unit = item.get("unit")
    return FeatureSpec(name, bounds, None if unit is None else str(unit))


def spec_beside(model_path: Path) -> Path | None:
    """The YAML spec next to the model (`wine.yaml` for `wine.joblib`), if there is one."""
    for suffix in SPEC_SUFFIXES:
        candidate = model_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def default_name(model_path: Path) -> str:
    """A model name from the file name: `Wine ET.joblib` -> `wine-et`."""
    stem = re.sub(r"[^a-z0-9._-]+", "-", model_path.stem.lower()).strip("-._")
    return stem[:63] or "model"


def package(model_path: Path, spec: PackageSpec, out_dir: Path | None = None) -> Packaged:
    """Check the model and write `model.joblib` + `model.json` into ``out_dir`` (by default
    the model's own directory); the result loads exactly as the service will load it."""
    model_path = Path(model_path)
    try:
        payload = model_path.read_bytes()
    except OSError as exc:
        raise PackageError(f"cannot read {model_path}: {exc.strerror}") from exc
    estimator = _unpickle(model_path, payload)
    problems = estimator_problems(estimator)
    if problems:
        raise PackageError(f"{model_path} holds {'; '.join(problems)}: nothing to serve")

    name = spec.name or default_name(model_path)
    if not re.fullmatch(NAME_PATTERN, name):
        raise PackageError(
            f"model name {name!r} must be 1-63 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit (--name)"
        )
    features, unbounded = _features(estimator, spec)
    class_names = _class_names(estimator, spec)
    if spec.example is not None and len(spec.example) != len(features):
        raise PackageError(
            f"the example has {len(spec.example)} values for {len(features)} features"
        )

    kind = type(estimator)
    try:
        manifest = ModelManifest(
            **provenance(name, payload, estimator),
            features=features,
            class_names=class_names,
            example=spec.example,
            hyperparameters=scalar_hyperparameters(estimator.get_params(deep=False)),
            packaged_at=datetime.now(UTC),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "manifest"
        raise PackageError(f"invalid manifest ({where}: {first['msg']})") from None
    _try_predicting(model_path, manifest, estimator)

    out_dir = Path(out_dir) if out_dir is not None else model_path.parent
    target = out_dir / MODEL_FILE
    if target.exists() and not target.samefile(model_path) and target.read_bytes() != payload:
        raise PackageError(
            f"{target} already holds another model: choose another directory with --out"
        )
    write_artifact(out_dir, payload, manifest)
    load_model(out_dir)  # exactly the service's checks
    return Packaged(manifest, out_dir, kind in FAST_PATH_ESTIMATORS, unbounded)


def _unpickle(model_path: Path, payload: bytes) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        try:
            return joblib.load(io.BytesIO(payload))
        except InconsistentVersionWarning as exc:
            raise PackageError(
                f"{model_path} was pickled by scikit-learn {exc.original_sklearn_version}, "
                f"but the service runs {sklearn.__version__}: fit or load it and dump it again "
                f"with scikit-learn {sklearn.__version__}"
            ) from None
        except Exception as exc:
            raise PackageError(f"cannot unpickle {model_path}: {exc!r}") from exc


def _features(estimator: Any, spec: PackageSpec) -> tuple[list[Feature], list[str]]:
    """The features in the estimator's column order, with bounds; and those left unbounded."""
    fitted_names = getattr(estimator, "feature_names_in_", None)
    n_features = getattr(estimator, "n_features_in_", None)
    given = spec.features
    if given is None:
        if fitted_names is None:
            count = f"{n_features} " if n_features is not None else ""
            raise PackageError(
                f"name the model's {count}features, in column order: --features a,b,c "
                "(or `features:` in the YAML spec)"
            )
        given = [FeatureSpec(str(name)) for name in fitted_names]
    if n_features is not None and len(given) != n_features:
        raise PackageError(f"{len(given)} feature names for a model of {n_features} features")
    names = [item.name for item in given]
    if fitted_names is not None and names != [str(name) for name in fitted_names]:
        raise PackageError(
            "the model was fitted with the feature names "
            f"{', '.join(map(str, fitted_names))}: name them so, in that order, or leave "
            "--features out"
        )
    unknown = set(spec.feature_bounds) - set(names)
    if unknown:
        raise PackageError(f"--bounds names unknown features: {', '.join(sorted(unknown))}")
    features, unbounded = [], []
    for item in given:
        bounds = spec.feature_bounds.get(item.name) or item.bounds or spec.bounds
        if bounds is None:
            unbounded.append(item.name)
        low, high = bounds or UNBOUNDED
        try:
            features.append(Feature(name=item.name, minimum=low, maximum=high, unit=item.unit))
        except ValidationError as exc:
            raise PackageError(f"feature {item.name!r}: {exc.errors()[0]['msg']}") from None
    return features, unbounded


def _class_names(estimator: Any, spec: PackageSpec) -> list[str]:
    labels = [str(label) for label in np.asarray(estimator.classes_).tolist()]
    if spec.classes is None:
        return labels
    if len(spec.classes) != len(labels):
        raise PackageError(
            f"{len(spec.classes)} class names for a model of {len(labels)} classes "
            f"(its classes_, in order: {', '.join(labels)})"
        )
    return list(spec.classes)


def _try_predicting(model_path: Path, manifest: ModelManifest, estimator: Any) -> None:
    """Predict one row as the service will, so a model that cannot answer is refused now."""
    row = manifest.example or [min(max(0.0, f.minimum), f.maximum) for f in manifest.features]
    try:
        proba = make_predictor(manifest, estimator).predict_proba(np.asarray([row]))
    except Exception as exc:
        raise PackageError(f"{model_path} cannot predict a row: {exc!r}") from exc
    if proba.shape != (1, len(manifest.class_names)):
        raise PackageError(f"{model_path} answered probabilities of shape {proba.shape}")


def spec_from_arguments(
    *,
    name: str | None,
    features: str | None,
    classes: str | None,
    bounds: Sequence[str],
    example: str | None,
) -> PackageSpec:
    """The command line's options as a spec: comma-separated lists; each `--bounds` is
    `MIN:MAX` (every feature without its own) or `NAME=MIN:MAX`."""
    spec = PackageSpec(name=name)
    if features:
        spec.features = [FeatureSpec(part.strip()) for part in features.split(",") if part.strip()]
    if classes:
        spec.classes = [part.strip() for part in classes.split(",") if part.strip()]
    for text in bounds:
        feature, sep, pair = text.partition("=")
        if sep:
            spec.feature_bounds[feature.strip()] = parse_bounds(pair)
        else:
            spec.bounds = parse_bounds(text)
    if example:
        try:
            spec.example = [float(part) for part in example.split(",")]
        except ValueError:
            raise PackageError("--example must be comma-separated numbers") from None
    return spec
