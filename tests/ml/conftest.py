"""One artifact trained per session (training is the slow part; tests only read it).

Named apart from the suite-wide ``model_dir`` so these tests pin their own seed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.ml.artifact import load_model
from service.ml.manifest import ModelManifest
from service.ml.predictor import ForestPredictor
from service.ml.train import train

SEED = 42


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelManifest]:
    out = tmp_path_factory.mktemp("ml-artifact")
    return out, train(out, seed=SEED)


@pytest.fixture(scope="session")
def artifact_dir(trained: tuple[Path, ModelManifest]) -> Path:
    return trained[0]


@pytest.fixture(scope="session")
def manifest(trained: tuple[Path, ModelManifest]) -> ModelManifest:
    return trained[1]


@pytest.fixture(scope="session")
def predictor(artifact_dir: Path) -> ForestPredictor:
    loaded = load_model(artifact_dir)
    assert isinstance(loaded, ForestPredictor)
    return loaded


@pytest.fixture
def artifact_copy(artifact_dir: Path, tmp_path: Path) -> Path:
    """A private copy for tests that damage the artifact."""
    return Path(shutil.copytree(artifact_dir, tmp_path / "model"))
