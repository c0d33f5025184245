"""deploy/system-packages.sh (`make run`, `make test`, .ci/run): what it finds missing and the
apt-get command lines it would run, on a PATH stripped of the tools (SYSTEM_PACKAGES=dry-run,
so nothing is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "system-packages.sh"
# What the script itself runs; everything else (redis-server, wrk, ...) is left out.
BASICS = ("bash", "env", "mktemp", "rm", "id", "grep")


def _bin(tmp_path: Path, *, apt: bool, python: str = sys.executable) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in BASICS:
        found = shutil.which(name)
        assert found, name
        (bin_dir / name).symlink_to(found)
    (bin_dir / "python3").symlink_to(python)
    if apt:  # never run in dry-run mode: only found
        fake = bin_dir / "apt-get"
        fake.write_text("#!/bin/sh\necho 'apt-get must not run in dry-run mode' >&2\nexit 99\n")
        fake.chmod(0o755)
    return bin_dir


def _run(bin_dir: Path, mode: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), mode],
        env={"PATH": str(bin_dir), "SYSTEM_PACKAGES": "dry-run", "VENV": sys.prefix} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_run_needs_redis_server_and_says_the_apt_command(tmp_path: Path) -> None:
    result = _run(_bin(tmp_path, apt=True), "run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "make run: installing system packages: redis-server curl"
    assert "apt-get update -q" in lines[1]
    assert lines[2].endswith("apt-get install -y -q --no-install-recommends redis-server curl")
    if os.getuid() == 0:
        assert lines[2].strip().startswith("env DEBIAN_FRONTEND=noninteractive apt-get")


def test_test_needs_the_servers_load_tools_and_browser(tmp_path: Path) -> None:
    result = _run(_bin(tmp_path, apt=True), "test")
    assert result.returncode == 0, result.stderr
    wanted = {"redis-server", "curl", "wrk", "redis-sentinel", "chromium", "chromium-driver"}
    # nginx lives in /usr/sbin, which the script also searches: missing only if absent there.
    if not Path("/usr/sbin/nginx").exists() and not Path("/usr/local/sbin/nginx").exists():
        wanted.add("nginx")
    first = result.stdout.splitlines()[0]
    assert first.startswith("make test: installing system packages: ")
    assert set(first.rsplit(": ", 1)[1].split()) == wanted


def test_python3_venv_when_venv_cannot_work(tmp_path: Path) -> None:
    no_venv = tmp_path / "python-without-venv"
    no_venv.write_text(
        f'#!/bin/sh\n[ "$1 $2" = "-m venv" ] && exit 1\nexec {sys.executable} "$@"\n'
    )
    no_venv.chmod(0o755)
    result = _run(_bin(tmp_path, apt=True, python=str(no_venv)), "run", VENV=str(tmp_path / "none"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith(": redis-server curl python3-venv")


def test_without_apt_a_missing_redis_server_is_one_line(tmp_path: Path) -> None:
    result = _run(_bin(tmp_path, apt=False), "run")
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    for hint in ("apt-get install redis-server", "brew install redis", "docker compose up"):
        assert hint in line


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("redis-server", "curl")),
    reason="this machine lacks some of the packages",
)
def test_nothing_missing_is_silent() -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), "run"],
        env=os.environ | {"VENV": sys.prefix},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_skip_checks_nothing(tmp_path: Path) -> None:
    result = _run(_bin(tmp_path, apt=False), "test", SYSTEM_PACKAGES="skip")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
