"""`make cluster` and the Redis `make run` recorded (var/redis/client.env): used when REDIS_URL
is set neither in the environment nor in the cluster's `.env`, and only while it runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from dotenv import dotenv_values

from tests.support.processes import RedisProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_cluster", ROOT / "deploy" / "cluster.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _make_run_record(root: Path, url: str, pid: int) -> None:
    (root / "var" / "redis").mkdir(parents=True)
    (root / "var" / "redis" / "client.env").write_text(f"REDIS_URL={url}\n")
    (root / "var" / "redis" / "redis.pid").write_text(f"{pid}\n")


def test_shares_a_running_make_run_redis(
    cluster_module: ModuleType,
    tmp_path: Path,
    redis_server: RedisProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert redis_server.proc is not None
    _make_run_record(tmp_path, redis_server.url, redis_server.proc.pid)
    env_file = tmp_path / ".env"
    env_file.write_text("REDIS_PASSWORD=from-make-run\n")
    found = cluster_module.make_run_redis(env_file)
    assert found is not None
    assert (found.url, found.pid) == (redis_server.url, redis_server.proc.pid)

    # The environment and the cluster's .env win.
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/0")
    assert cluster_module.make_run_redis(env_file) is None
    monkeypatch.delenv("REDIS_URL")
    env_file.write_text("REDIS_URL=redis://mine:6379/0\n")
    assert cluster_module.make_run_redis(env_file) is None


def test_a_stopped_make_run_redis_is_not_shared(
    cluster_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    _make_run_record(tmp_path, "redis://api@127.0.0.1:6399/0", proc.pid)
    assert cluster_module.make_run_redis(tmp_path / ".env") is None


def test_its_own_redis_is_recorded_for_the_cli(cluster_module: ModuleType, tmp_path: Path) -> None:
    layout = cluster_module.Layout(tmp_path)
    cluster_module._redis_conf(layout, 6391, "64mb")
    assert dotenv_values(layout.redis_record) == {
        "REDIS_URL": "redis://api@127.0.0.1:6391/0",
        "REDIS_PASSWORD_FILE": str(layout.redis_password),
    }
    assert layout.redis_password.read_text().strip() not in layout.redis_record.read_text()
