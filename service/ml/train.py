"""Train the Iris forest and write a verifiable artifact.

Everything is seeded and single-threaded, so the same seed and library versions give the
same pickle bytes, hence the same sha256 and model version.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

from service.ml.artifact import provenance, write_artifact
from service.ml.manifest import Feature, ModelManifest, scalar_hyperparameters

MODEL_NAME = "iris-rf"
FEATURE_NAMES: tuple[str, ...] = ("sepal_length", "sepal_width", "petal_length", "petal_width")
CLASS_NAMES: tuple[str, ...] = ("setosa", "versicolor", "virginica")
# The physical range the API accepts for every measurement, in centimetres: wide enough for
# any real flower, narrow enough to refuse garbage.
FEATURE_RANGE_CM = (0.0, 100.0)
TEST_SIZE = 0.25


def train(out_dir: Path, seed: int = 42) -> ModelManifest:
    """Fit on a stratified 75 % split, score on the rest, and write model + manifest."""
    dataset = load_iris()
    X_train, X_test, y_train, y_test = train_test_split(
        dataset.data,
        dataset.target,
        test_size=TEST_SIZE,
        stratify=dataset.target,
        random_state=seed,
    )
    estimator = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    estimator.fit(X_train, y_train)
    accuracy = float(np.mean(estimator.predict(X_test) == y_test))

    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    payload = buffer.getvalue()
    manifest = ModelManifest(
        **provenance(MODEL_NAME, payload, estimator),
        features=[
            Feature(name=name, minimum=FEATURE_RANGE_CM[0], maximum=FEATURE_RANGE_CM[1], unit="cm")
            for name in FEATURE_NAMES
        ],
        class_names=[str(name) for name in dataset.target_names],
        example=[float(value) for value in dataset.data[0]],
        hyperparameters=scalar_hyperparameters(estimator.get_params()),
        metrics={"accuracy": accuracy, "n_train": len(y_train), "n_test": len(y_test)},
        trained_at=datetime.now(UTC),
    )

    write_artifact(Path(out_dir), payload, manifest)
    return manifest


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m service.ml.train", description="Train the Iris model artifact."
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for the artifact")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    args = parser.parse_args(argv)
    manifest = train(args.out, seed=args.seed)
    accuracy = (manifest.metrics or {})["accuracy"]
    print(f"trained {manifest.version} accuracy={accuracy:.4f} -> {args.out.resolve()}")


if __name__ == "__main__":
    main()
