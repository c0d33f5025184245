"""The image build's model step (`python -m service.ml.bake`, deploy/Dockerfile), without
Docker: the Iris forest trained to its pin, or a packaged model from models/, loaded as the
service loads it and checked against the expected version."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
import pytest
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier

from service.ml.bake import BakeError, bake
from service.ml.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest
from service.ml.package import package, spec_from_arguments

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()
(IRIS_PIN,) = re.findall(r"^ARG IRIS_MODEL_VERSION=(\S+)$", DOCKERFILE, re.MULTILINE)


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build context whose models/wine holds a packaged wine forest."""
    root = tmp_path_factory.mktemp("context")
    wine = load_wine()
    source = root / "fitted" / "wine.joblib"
    source.parent.mkdir()
    joblib.dump(
        RandomForestClassifier(n_estimators=5, random_state=0).fit(wine.data, wine.target), source
    )
    spec = spec_from_arguments(
        name="wine-rf",
        features=",".join(wine.feature_names),
        classes=None,
        bounds=["0:2000"],
        example=None,
    )
    package(source, spec, root / "models" / "wine")
    return root


def _manifest(context: Path) -> ModelManifest:
    return ModelManifest.model_validate_json(
        (context / "models" / "wine" / MANIFEST_FILE).read_bytes()
    )


def test_the_dockerfile_pin_is_what_training_gives(tmp_path: Path) -> None:
    """Training is deterministic: the default build passes its own version check."""
    manifest = bake(tmp_path / "out", model_dir="", version="", iris_version=IRIS_PIN, context=ROOT)
    assert manifest.version == IRIS_PIN
    with pytest.raises(BakeError, match=f"would serve {IRIS_PIN}, but the expected version is x"):
        bake(tmp_path / "again", model_dir="", version="x", iris_version=IRIS_PIN, context=ROOT)


@pytest.mark.parametrize("model_dir", ["models/wine", "./models/wine/", " models/wine "])
def test_a_packaged_model_is_copied_and_verified(
    context: Path, tmp_path: Path, model_dir: str
) -> None:
    expected = _manifest(context)
    for version in ("", expected.version):
        out = tmp_path / f"out-{bool(version)}"
        manifest = bake(
            out, model_dir=model_dir, version=version, iris_version=IRIS_PIN, context=context
        )
        assert manifest == expected
        assert sorted(p.name for p in out.iterdir()) == sorted([MODEL_FILE, MANIFEST_FILE])
        assert (out / MODEL_FILE).read_bytes() == (
            context / "models" / "wine" / MODEL_FILE
        ).read_bytes()


def test_a_packaged_model_of_another_version_is_refused(context: Path, tmp_path: Path) -> None:
    with pytest.raises(BakeError) as info:
        bake(
            tmp_path / "out",
            model_dir="models/wine",
            version=IRIS_PIN,
            iris_version=IRIS_PIN,
            context=context,
        )
    assert f"pass --build-arg MODEL_VERSION={_manifest(context).version}" in str(info.value)


@pytest.mark.parametrize(
    ("model_dir", "message"),
    [
        ("/abs/models/wine", "under models/"),
        ("models/../var", "under models/"),
        ("var/model", "under models/"),
        ("models/nothing", "no such directory"),
        ("models", "has no model.joblib"),
    ],
)
def test_where_a_model_may_come_from(
    context: Path, tmp_path: Path, model_dir: str, message: str
) -> None:
    with pytest.raises(BakeError, match=message):
        bake(
            tmp_path / "out",
            model_dir=model_dir,
            version="",
            iris_version=IRIS_PIN,
            context=context,
        )


def test_a_tampered_model_fails_the_build(context: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ctx"
    shutil.copytree(context / "models", copy / "models")
    path = copy / "models" / "wine" / MODEL_FILE
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(BakeError, match="tampered with or replaced"):
        bake(
            tmp_path / "out",
            model_dir="models/wine",
            version="",
            iris_version=IRIS_PIN,
            context=copy,
        )


def test_command_line(context: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "service.ml.bake",
        "--out",
        str(tmp_path / "out"),
        "--context",
        str(context),
    ]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*command, "--model-dir", "models/wine"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"baked {_manifest(context).version}" in done.stdout
    refused = subprocess.run(
        [*command, "--model-dir", "elsewhere"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: MODEL_DIR='elsewhere'")
