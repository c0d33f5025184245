"""The servers under test: start them on free ports, stop them, and account their CPU.

A bench run starts everything it measures here, on 127.0.0.1 only, and stops it by PID
whatever happens; all of it runs side by side for the whole run, so that the rounds can
interleave the targets:

- one Redis topology of `--redis-mode` (deploy/redis_topology.py: a standalone server, a
  Redis Cluster of 3 primaries and 3 replicas, or a primary, a replica and 3 sentinels),
  shared by both deployments of the service;
- "ceiling": the bare FastAPI app of ceiling_app.py, gunicorn with 2 UvicornWorkers;
- "direct": one gunicorn with the project's config (the service, every protection on);
- "nginx": `deploy/cluster.py` (3 instances behind nginx) on the same Redis;
- "mlserver" (optional, peers.py).

Each is handed to the measuring modules as a `Deployment`: its URL, its admin credentials,
the pids whose CPU time (read from /proc) is charged to it and, for the service, the probe
that reads Redis's INFO on every primary.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from errors import ToolError
from redis import Redis
from redis_stats import InfoReader, RedisProbe

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / "deploy" / "bench"
CLUSTER = ROOT / "deploy" / "cluster.py"
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
# deploy/'s scripts import each other by name, as they do when run (`python deploy/...`).
if str(ROOT / "deploy") not in sys.path:
    sys.path.append(str(ROOT / "deploy"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis_topology  # noqa: E402 - needs the paths above

from service.infra.keys import user_tag  # noqa: E402 - needs the paths above

ADMIN_USER = "bench-admin"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_ports(count: int) -> list[int]:
    """Distinct ports the kernel just handed out (held together while choosing)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """SIGTERM by pid, then SIGKILL: only processes this script started."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (gunicorn workers of a master, nginx workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_http(url: str, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise ToolError(f"server for {url} exited while starting")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ToolError(f"{url} not ready within {timeout:.0f}s")


def server_env(args: argparse.Namespace) -> dict[str, str]:
    """Production settings with throwaway secrets; nothing from the developer's .env.

    `--app`, `--pythonpath` and `--env` exist for A/B runs of a candidate change (e.g. a
    module that patches a dependency before building the app) without editing the tree;
    `--app` and `--pythonpath` apply to the direct server only, `--env` to both.
    """
    extra = dict(item.split("=", 1) for item in args.env)
    python_path = os.pathsep.join([*args.pythonpath, str(ROOT)])
    return {
        # The set-up logs in every bench user from 127.0.0.1 (api.py), more than the per-
        # address login limit's burst of 30; logins are not measured. Every measured route
        # keeps its limits.
        "RATE_LIMIT_LOGIN_IP": "1000/minute",
        **extra,
        "BENCH_APP": args.app,
        "PYTHONPATH": python_path,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "APP_ENV": "production",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "ADMIN_USERNAME": ADMIN_USER,
        "ADMIN_PASSWORD": secrets.token_urlsafe(24),
        "MODEL_DIR": str(args.model_dir.resolve()),
        "WEB_CONCURRENCY": str(args.workers),
        "LOG_FORMAT": "json",
        "ACCESS_TOKEN_TTL_SECONDS": "3600",
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class Deployment:
    """A running target: its URL and the pids whose CPU time we attribute to it; for the
    service, its admin credentials and the probe of its Redis."""

    url: str
    workers: Callable[[], list[int]]
    others: Callable[[], dict[str, list[int]]] = field(default=lambda: {})
    admin: tuple[str, str] | None = None
    redis: RedisProbe | None = None

    def pids(self) -> dict[str, list[int]]:
        return {"workers": self.workers(), **self.others()}


@dataclass
class RedisUnderTest:
    """The run's Redis topology: the API's settings for it, its primaries and replicas (by
    role when it started: the bench makes no failover) and a probe of the primaries."""

    topology: redis_topology.Topology
    primaries: list[redis_topology.Node]
    replicas: list[redis_topology.Node]
    probe: RedisProbe

    @property
    def mode(self) -> str:
        return self.topology.mode

    def app_env(self) -> dict[str, str]:
        return self.topology.app_env()

    def pids(self) -> dict[str, list[int]]:
        pids = {"redis": [node.pid for node in self.primaries]}
        if self.replicas:
            pids["redis replicas"] = [node.pid for node in self.replicas]
        return pids

    def primary_of_user(self, username: str) -> str:
        """The name of the primary holding `username`'s keys (all in its hash tag's slot)."""
        if isinstance(self.topology, redis_topology.RedisCluster):
            return self.topology.primary_for_key(user_tag(username.lower())).name
        return self.primaries[0].name

    def describe(self) -> str:
        primaries = ", ".join(f"{n.name} {n.address}" for n in self.primaries)
        return f"{self.mode}: {len(self.primaries)} primary(ies) ({primaries})" + (
            f", {len(self.replicas)} replica(s)" if self.replicas else ""
        )


@contextmanager
def redis_under_test(work: Path, mode: str) -> Iterator[RedisUnderTest]:
    """A new, empty topology of `mode` (ACL users, AOF, memory cap: deploy/redis_topology.py,
    as `make cluster` runs it) in `work`, stopped by PID on exit."""
    if shutil.which("redis-server") is None:
        raise ToolError("redis-server not found: apt-get install redis-server (or brew)")
    topology = redis_topology.TOPOLOGIES[mode](dir=work)
    clients = []
    try:
        try:
            topology.start()
        except (RuntimeError, TimeoutError, OSError) as exc:
            raise ToolError(f"redis {mode} did not start: {exc}") from None
        servers = topology.servers()
        roles = {node.name: topology.role(node) for node in servers}
        primaries = [n for n in servers if roles[n.name] == "master"]
        replicas = [n for n in servers if roles[n.name] != "master"]
        readers: dict[str, InfoReader] = {}
        for node in primaries:
            client = topology.client(node, timeout=5.0)
            clients.append(client)
            readers[node.name] = _info_reader(client)
        yield RedisUnderTest(topology, primaries, replicas, RedisProbe(readers))
    finally:
        for client in clients:
            client.close()
        topology.stop()


def _info_reader(client: Redis) -> InfoReader:
    def read() -> dict[str, Any]:
        info: dict[str, Any] = redis_topology.command(
            client, "INFO", "cpu", "commandstats", "stats"
        )
        return info

    return read


def _gunicorn(
    command: list[str], env: dict[str, str], work: Path, ready: str
) -> subprocess.Popen[bytes]:
    """Start a gunicorn master in its own session, cwd `work` (so no repository .env is
    read), and wait until `ready` answers 200; its log is work/gunicorn.log."""
    work.mkdir(parents=True, exist_ok=True)
    with (work / "gunicorn.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *command], cwd=work, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_http(ready, 60, lambda: proc.poll() is None)
    except ToolError:
        stop(proc)
        tail = (work / "gunicorn.log").read_text(errors="replace")[-3000:]
        raise ToolError(f"gunicorn did not become ready; log tail:\n{tail}") from None
    return proc


@contextmanager
def ceiling_deployment(work: Path, workers: int) -> Iterator[Deployment]:
    """The bare FastAPI app (ceiling_app.py): gunicorn, `workers` UvicornWorkers (uvloop,
    httptools), a free port; stopped on exit."""
    (port,) = free_ports(1)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    command = ["--pythonpath", str(BENCH_DIR), "-k", "ceiling_app.Worker", "-w", str(workers),
               "--bind", f"127.0.0.1:{port}", "--keep-alive", "75", "--backlog", "2048",
               "--log-level", "warning", "ceiling_app:app"]  # fmt: skip
    proc: subprocess.Popen[bytes] | None = None
    try:
        url = f"http://127.0.0.1:{port}"
        proc = _gunicorn(command, env, work, url + "/healthz")
        master = proc.pid
        yield Deployment(url=url, workers=lambda: children(master))
    finally:
        stop(proc)


def baseline_tree(revision: str, into: Path) -> Path:
    """The tracked files of `revision` (`git archive`) and a model trained by that revision's
    own `service.ml.train` in `into/var/model` (the manifest's format may differ from
    today's), for a baseline server."""
    into.mkdir(parents=True)
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "service", "deploy"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True,
                       timeout=60)  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "service.ml.train", "--out", str(into / "var" / "model")],
            cwd=into, env=os.environ | {"PYTHONPATH": str(into)}, capture_output=True,
            check=True, timeout=300,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise ToolError(
            f"cannot run revision {revision!r}: {exc} {detail.decode(errors='replace')[-2000:]}"
        ) from None
    return into


@contextmanager
def direct_deployment(
    work: Path, env: dict[str, str], redis: RedisUnderTest, gunicorn_conf: Path = GUNICORN_CONF
) -> Iterator[Deployment]:
    """One gunicorn (the project's config) on a free port, on the run's Redis; stopped on
    exit."""
    (api_port,) = free_ports(1)
    app_env = (
        env
        | redis.app_env()
        | {
            "BIND": f"127.0.0.1:{api_port}",
            "INSTANCE_NAME": "bench",
        }
    )
    api: subprocess.Popen[bytes] | None = None
    try:
        url = f"http://127.0.0.1:{api_port}"
        api = _gunicorn(["-c", str(gunicorn_conf), env["BENCH_APP"]], app_env, work,
                        url + "/readyz")  # fmt: skip
        master = api.pid
        yield Deployment(
            url=url,
            admin=(ADMIN_USER, env["ADMIN_PASSWORD"]),
            workers=lambda: children(master),
            others=redis.pids,
            redis=redis.probe,
        )
    finally:
        stop(api)


def _pidfile(path: Path) -> list[int]:
    try:
        return [int(path.read_text().split()[0])]
    except (OSError, ValueError, IndexError):
        return []


def _is_honcho(pid: int) -> bool:
    try:
        return b"honcho" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@contextmanager
def cluster_deployment(
    work: Path, env: dict[str, str], redis: RedisUnderTest, timeout: float
) -> Iterator[Deployment]:
    """`deploy/cluster.py up` on free ports in `work`, its instances on the run's Redis
    (given as REDIS_URL, so the cluster starts none of its own); `down` whatever happens."""
    port, redis_port, *api_ports = free_ports(5)
    args = ["--dir", str(work), "--port", str(port), "--redis-port", str(redis_port),
            "--api-ports", ",".join(map(str, api_ports)), "--env-file", str(work / ".env"),
            "--timeout", str(timeout)]  # fmt: skip
    cli = [sys.executable, str(CLUSTER)]
    # The cluster sizes its instances' workers to the host (see deploy/cluster.py).
    env = {name: value for name, value in env.items() if name != "WEB_CONCURRENCY"}
    env |= redis.app_env()
    work.mkdir(parents=True, exist_ok=True)
    try:
        up = subprocess.run(
            [*cli, "up", *args], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=timeout + 60, check=False,
        )  # fmt: skip
        if up.returncode != 0:
            raise ToolError(f"cluster up failed:\n{up.stdout[-2000:]}\n{up.stderr[-2000:]}")

        def workers() -> list[int]:
            masters = [p for i in range(1, 4) for p in _pidfile(work / f"api{i}/gunicorn.pid")]
            return [w for m in masters for w in children(m)]

        def others() -> dict[str, list[int]]:
            nginx = _pidfile(work / "nginx" / "nginx.pid")
            # honcho and its per-process printers carry every log line of the cluster.
            honcho = _pidfile(work / "honcho.pid")
            return redis.pids() | {
                "nginx": nginx + [w for m in nginx for w in children(m)],
                "honcho": honcho + [c for h in honcho for c in children(h) if _is_honcho(c)],
            }

        yield Deployment(
            url=f"http://127.0.0.1:{port}",
            admin=(ADMIN_USER, env["ADMIN_PASSWORD"]),
            workers=workers,
            others=others,
            redis=redis.probe,
        )
    finally:
        subprocess.run(
            [*cli, "down", *args], cwd=ROOT, env=env, capture_output=True, timeout=120,
            check=False,
        )  # fmt: skip
