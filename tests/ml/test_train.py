"""Training is reproducible, honest about what it wrote, and usable from the command line."""

from __future__ import annotations

import hashlib
import json
import platform
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import joblib
import numpy as np
import pytest
import sklearn
from sklearn.datasets import load_iris

from service.ml.artifact import load_model
from service.ml.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest
from service.ml.train import CLASS_NAMES, FEATURE_NAMES, main, train
from tests.ml.conftest import SEED

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_same_seed_gives_identical_bytes(manifest: ModelManifest, tmp_path: Path) -> None:
    again = train(tmp_path, seed=SEED)
    assert again.sha256 == manifest.sha256
    assert again.version == manifest.version


def test_other_seed_gives_another_model(manifest: ModelManifest, tmp_path: Path) -> None:
    other = train(tmp_path, seed=SEED + 1)
    assert other.sha256 != manifest.sha256
    assert other.hyperparameters["random_state"] == SEED + 1


def test_manifest_describes_the_written_artifact(
    artifact_dir: Path, manifest: ModelManifest
) -> None:
    written = ModelManifest.model_validate_json((artifact_dir / MANIFEST_FILE).read_bytes())
    assert written == manifest
    digest = hashlib.sha256((artifact_dir / MODEL_FILE).read_bytes()).hexdigest()
    assert manifest.sha256 == digest
    assert manifest.version == f"iris-rf-{digest[:12]}"
    assert manifest.sklearn_version == sklearn.__version__
    assert manifest.numpy_version == np.__version__
    assert manifest.joblib_version == joblib.__version__
    assert manifest.python_version == platform.python_version()
    assert manifest.feature_names == list(FEATURE_NAMES)
    assert manifest.class_names == list(CLASS_NAMES)
    assert manifest.hyperparameters["n_estimators"] == 100
    assert manifest.hyperparameters["random_state"] == SEED
    assert manifest.hyperparameters["n_jobs"] == 1
    json.dumps(manifest.hyperparameters)
    assert manifest.estimator == "sklearn.ensemble._forest.RandomForestClassifier"
    assert manifest.trained_at is not None
    assert manifest.packaged_at is None
    assert manifest.trained_at.utcoffset() == timedelta(0)
    assert datetime.now(UTC) - manifest.trained_at < timedelta(hours=1)


def test_class_and_feature_order_follow_the_dataset() -> None:
    dataset = load_iris()
    assert tuple(dataset.target_names) == CLASS_NAMES
    assert [name.replace(" (cm)", "").replace(" ", "_") for name in dataset.feature_names] == list(
        FEATURE_NAMES
    )


def test_held_out_accuracy(manifest: ModelManifest) -> None:
    metrics = manifest.metrics
    assert metrics is not None
    assert metrics["accuracy"] >= 0.9
    assert metrics["n_test"] == 38
    assert metrics["n_train"] + metrics["n_test"] == 150


def test_output_is_complete_and_world_readable(artifact_dir: Path) -> None:
    assert sorted(p.name for p in artifact_dir.iterdir()) == sorted([MODEL_FILE, MANIFEST_FILE])
    for name in (MODEL_FILE, MANIFEST_FILE):
        assert stat.S_IMODE((artifact_dir / name).stat().st_mode) == 0o644


def test_creates_missing_directories(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    train(out)
    assert (out / MODEL_FILE).is_file()


def test_command_line(manifest: ModelManifest, tmp_path: Path) -> None:
    out = tmp_path / "cli-model"
    result = subprocess.run(
        [sys.executable, "-m", "service.ml.train", "--out", str(out), "--seed", str(SEED)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert manifest.version in lines[0]
    assert "accuracy=" in lines[0]
    assert str(out.resolve()) in lines[0]
    # A separate process reproduces the same bytes, so versions are stable across runs.
    assert load_model(out).manifest.sha256 == manifest.sha256


def test_command_line_requires_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err
