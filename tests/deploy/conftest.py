"""The cluster topology (Redis, 3 gunicorn instances, nginx) on free ports, started by the same
`deploy/cluster.py` that `make cluster` runs, in a temporary directory, once per Redis mode:
one redis-server (standalone), a Redis Cluster of 3 primaries and 3 replicas (cluster), or a
primary, a replica and 3 sentinels (sentinel). A test runs in standalone mode unless it asks
for others (`ALL_MODES`, or `pytest.mark.parametrize("cluster", [...], indirect=True,
scope="package")`); the modules of this package share one cluster per mode (each start costs
about 10 s), so a test that kills something leaves the cluster healthy again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from dotenv import dotenv_values

from tests.support.processes import free_ports
from tests.support.topologies import MODES, Topology, attach

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "cluster.py"
INSTANCES = 3
WORKERS = 2  # per instance
PREDICT_LIMIT = 20
# Variables the cluster decides itself, or that would point it at something else.
_FOREIGN = ("REDIS_URL", "REDIS_PASSWORD", "REDIS_PASSWORD_FILE", "BIND", "INSTANCE_NAME",
            "PROMETHEUS_MULTIPROC_DIR", "JWT_SECRET_FILE", "ADMIN_PASSWORD_FILE", "REDIS_MODE",
            "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD",
            "REDIS_SENTINEL_PASSWORD_FILE")  # fmt: skip


@dataclass(frozen=True)
class Cluster:
    """A running cluster: its nginx URL, each instance's URL and where its pids are; in
    cluster and sentinel mode, its Redis topology (deploy/redis_topology.py) too."""

    dir: Path
    url: str
    instances: tuple[str, ...]
    redis_port: int
    admin_username: str
    admin_password: str
    mode: str = "standalone"
    topology: Topology | None = None

    def gunicorn_pid(self, index: int) -> int:
        return int((self.dir / f"api{index + 1}" / "gunicorn.pid").read_text())

    def redis_pid(self) -> int:
        return int((self.dir / "redis" / "redis.pid").read_text())

    def wait_redis_replaced(self, old_pid: int, timeout: float = 30) -> None:
        """Wait until a new redis-server runs in place of `old_pid` and accepts connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.redis_pid() != old_pid:
                    socket.create_connection(("127.0.0.1", self.redis_port), timeout=1).close()
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"redis-server not restarted within {timeout}s")

    def restart_redis(self) -> None:
        """Every Redis server stops cleanly (SIGTERM: the AOF is synced) and starts again:
        the one redis-server, restarted by the cluster's restart loop, or every server of the
        topology (a sentinel master first, then its replica)."""
        if self.topology is None:
            redis_pid = self.redis_pid()
            os.kill(redis_pid, signal.SIGTERM)
            self.wait_redis_replaced(redis_pid)
        else:
            self.topology.restart_servers()

    def wait_ready(self, index: int, *, not_pid: int | None = None, timeout: float = 60) -> None:
        """Wait until instance `index` answers /readyz (and, if given, no longer runs as
        master pid `not_pid`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                replaced = not_pid is None or self.gunicorn_pid(index) != not_pid
                if replaced and httpx.get(self.instances[index] + "/readyz").status_code == 200:
                    return
            except (OSError, ValueError, httpx.HTTPError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"instance {index + 1} not ready within {timeout}s")


def _cluster_cli(command: str, args: list[str], env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, str(CLUSTER), command, *args], cwd=ROOT, env=env, check=True, timeout=150
    )


# Tests of what Redis holds (tokens, logouts, limits) run on every topology.
ALL_MODES = pytest.mark.parametrize("cluster", MODES, indirect=True, scope="package")


@pytest.fixture(scope="package", params=["standalone"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[Cluster]:
    """One cluster per Redis mode for this package's tests (stopped right after them); `down`
    runs whatever happens."""
    mode: str = request.param
    run_dir = tmp_path_factory.mktemp(f"cluster-{mode}")
    port, redis_port, *api_ports = free_ports(2 + INSTANCES)
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN}
    env |= {
        "MODEL_DIR": str(model_dir),
        # Per hour: a burst spread over seconds by a busy machine still sees exactly N (GCRA
        # adds one request per window/N).
        "RATE_LIMIT_PREDICT": f"{PREDICT_LIMIT}/hour",
        "RATE_LIMIT_LOGIN": "1000/minute",
        "RATE_LIMIT_LOGIN_IP": "1000/minute",
        "RATE_LIMIT_PUBLIC": "100000/minute",
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST_KIB": "1024",
        "ARGON2_PARALLELISM": "1",
        "WEB_CONCURRENCY": str(WORKERS),
        "GRACEFUL_TIMEOUT": "10",
        "LOG_FORMAT": "text",
    }
    env_file = run_dir / ".env"
    args = ["--dir", str(run_dir), "--port", str(port), "--redis-port", str(redis_port),
            "--api-ports", ",".join(map(str, api_ports)), "--env-file", str(env_file),
            "--redis-mode", mode]  # fmt: skip
    try:
        _cluster_cli("up", args, env)
        secrets = dotenv_values(env_file)
        yield Cluster(
            dir=run_dir,
            url=f"http://127.0.0.1:{port}",
            instances=tuple(f"http://127.0.0.1:{p}" for p in api_ports),
            redis_port=redis_port,
            admin_username=secrets["ADMIN_USERNAME"] or "",
            admin_password=secrets["ADMIN_PASSWORD"] or "",
            mode=mode,
            # deploy/cluster.py's Layout.topology_dir
            topology=None if mode == "standalone" else attach(run_dir / "redis-topology"),
        )
    finally:
        _cluster_cli("down", args, env)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client (the suite's `client` is an in-process ASGI one)."""
    async with httpx.AsyncClient(timeout=30) as client:
        yield client
