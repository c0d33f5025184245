"""Put the model an image serves in place, at build time (deploy/Dockerfile):
`python -m service.ml.bake --out /opt/model [--model-dir models/NAME] [--version VERSION]
--iris-version PIN`.

Without `--model-dir`, the Iris forest is trained, as `make model` does; training is
deterministic, so its version is known in advance and pinned (the Dockerfile's
IRIS_MODEL_VERSION). With it, the packaged artifact in that directory of the build context
(`python -m service model package ... --out models/NAME`) is copied. Either way the result
is loaded exactly as the service loads it (digest, scikit-learn version, estimator), and its
version must be the expected one when there is one (`--version`, else the Iris pin when
training): an image is never labelled with a model it does not hold.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from service.ml.artifact import ArtifactError, load_model
from service.ml.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest
from service.ml.train import train

MODELS_DIR = "models"


class BakeError(Exception):
    """The image cannot be built with this model; the message says what to change."""


def source_dir(context: Path, model_dir: str) -> Path:
    """`model_dir` inside the build context's models/ directory (the only part of the
    context that holds models; .dockerignore leaves the rest out)."""
    relative = PurePosixPath(model_dir.strip().removeprefix("./").rstrip("/"))
    if relative.is_absolute() or ".." in relative.parts or relative.parts[:1] != (MODELS_DIR,):
        raise BakeError(
            f"MODEL_DIR={model_dir!r}: give a directory under {MODELS_DIR}/ of the repository "
            f"(e.g. {MODELS_DIR}/wine): the image is built from the repository, and only "
            f"{MODELS_DIR}/ holds models there"
        )
    path = context / relative
    if not path.is_dir():
        raise BakeError(f"MODEL_DIR={model_dir!r}: no such directory in the build context")
    return path


def bake(
    out: Path, *, model_dir: str, version: str, iris_version: str, context: Path
) -> ModelManifest:
    out = Path(out)
    if model_dir.strip():
        source = source_dir(context, model_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, MANIFEST_FILE):
            if not (source / name).is_file():
                raise BakeError(
                    f"MODEL_DIR={model_dir!r} has no {name}: package the model into it with "
                    f"`python -m service model package MODEL.joblib --out {model_dir}`"
                )
            shutil.copyfile(source / name, out / name)
            (out / name).chmod(0o644)
        expected = version.strip()
    else:
        train(out)
        expected = version.strip() or iris_version
    try:
        manifest = load_model(out).manifest
    except ArtifactError as exc:
        raise BakeError(str(exc)) from None
    if expected and manifest.version != expected:
        raise BakeError(
            f"the image would serve {manifest.version}, but the expected version is "
            f"{expected}: pass --build-arg MODEL_VERSION={manifest.version}"
            + ("" if model_dir.strip() else " (or update IRIS_MODEL_VERSION in deploy/Dockerfile)")
        )
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.ml.bake", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model-dir", default="", help="packaged model under models/")
    parser.add_argument("--version", default="", help="the version the model must have")
    parser.add_argument("--iris-version", default="", help="the trained Iris model's pin")
    parser.add_argument("--context", type=Path, default=Path.cwd(), help="the build context")
    args = parser.parse_args(argv)
    try:
        manifest = bake(
            args.out,
            model_dir=args.model_dir,
            version=args.version,
            iris_version=args.iris_version,
            context=args.context,
        )
    except BakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"baked {manifest.version} ({manifest.estimator}) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
