"""The lock files pin every dependency with its hashes, and every install requires them."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ("requirements.lock", "requirements-dev.lock")


def _requirements(lock: str) -> dict[str, list[str]]:
    """Each pinned requirement of a lock file and its hashes."""
    text = (ROOT / lock).read_text(encoding="utf-8").replace("\\\n", " ")
    entries = {}
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            pin, *options = line.split()
            entries[pin] = [o.removeprefix("--hash=") for o in options if o.startswith("--hash")]
    return entries


@pytest.mark.parametrize("lock", LOCKS)
def test_every_locked_requirement_has_hashes(lock: str) -> None:
    requirements = _requirements(lock)
    assert len(requirements) > 20
    for pin, hashes in requirements.items():
        assert re.fullmatch(r"[a-z0-9._-]+(\[[a-z0-9,_-]+\])?==[^=\s]+", pin), pin
        assert hashes, f"{lock}: {pin} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), pin


@pytest.mark.parametrize("lock", LOCKS)
def test_the_header_says_how_to_regenerate_it(lock: str) -> None:
    header = (ROOT / lock).read_text(encoding="utf-8").splitlines()[1]
    assert header.startswith("#    uv pip compile pyproject.toml")
    assert f"-o {lock}" in header
    assert header.endswith("--generate-hashes")


def test_the_dev_lock_keeps_the_runtime_pins() -> None:
    runtime, dev = _requirements("requirements.lock"), _requirements("requirements-dev.lock")
    assert set(runtime) <= set(dev)


def test_installs_require_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "$(UV) pip install --quiet --python $(PY) --require-hashes -r requirements-dev.lock" in (
        makefile
    )
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    assert "pip install --no-cache-dir --require-hashes -r requirements.lock" in dockerfile


def test_the_uv_bootstrap_is_pinned_by_the_dev_lock() -> None:
    """`make install` installs uv itself from its entry in the dev lock, with its hashes:
    the Makefile's extraction yields exactly that entry, at pyproject.toml's version."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    (extract,) = re.findall(r"-r <\((sed .*requirements-dev\.lock[^)]*)\)", makefile)
    extracted = subprocess.run(
        ["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    pin = extracted.split()[0]
    assert {pin: _requirements("requirements-dev.lock")[pin]} == {
        pin: [h.removeprefix("--hash=") for h in extracted.split() if h.startswith("--hash")]
    }
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert pin in dev["dev"]
    bootstrap = "--disable-pip-version-check --require-hashes --no-deps \\\n\t\t-r <(sed"
    assert f"$(PY) -m pip install --quiet {bootstrap}" in makefile
