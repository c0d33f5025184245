"""The servers under test: start them on free ports, stop them, and account their CPU.

A bench run measures two deployments of the same code, both started here and stopped
whatever happens: "direct" (redis-server + one gunicorn with the project's config) and
"nginx" (`deploy/cluster.py`: redis, 3 instances, nginx). Each is handed to the measuring
modules as a `Deployment`: its URL, its admin credentials and the pids whose CPU time
(read from /proc) is charged to it.
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
from dataclasses import dataclass
from pathlib import Path

import httpx
from errors import ToolError

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "cluster.py"
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
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
    return extra | {
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
    """A running target: its URL and the pids whose CPU time we attribute to it."""

    url: str
    admin: tuple[str, str]
    workers: Callable[[], list[int]]
    others: Callable[[], dict[str, list[int]]]

    def pids(self) -> dict[str, list[int]]:
        return {"workers": self.workers(), **self.others()}


@contextmanager
def direct_deployment(work: Path, env: dict[str, str]) -> Iterator[Deployment]:
    """redis-server + one gunicorn (the project's config) on free ports, stopped on exit."""
    redis_port, api_port = free_ports(2)
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise ToolError("redis-server not found: apt-get install redis-server (or brew)")
    (work / "redis").mkdir(parents=True, exist_ok=True)
    redis: subprocess.Popen[bytes] | None = None
    api: subprocess.Popen[bytes] | None = None
    try:
        # Same persistence as the cluster and Compose (AOF, fsync every second).
        redis = subprocess.Popen(
            [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1",
             "--dir", str(work / "redis"), "--save", "", "--appendonly", "yes",
             "--appendfsync", "everysec"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        app_env = env | {
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "BIND": f"127.0.0.1:{api_port}",
            "INSTANCE_NAME": "bench",
        }
        log = (work / "gunicorn.log").open("ab")
        # cwd is the work dir, so the repository's .env is not read.
        api = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), env["BENCH_APP"]],
            cwd=work, env=app_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{api_port}"
        api_proc = api
        try:
            wait_http(url + "/readyz", 60, lambda: api_proc.poll() is None)
        except ToolError:
            tail = (work / "gunicorn.log").read_text(errors="replace")[-3000:]
            raise ToolError(f"gunicorn did not become ready; log tail:\n{tail}") from None
        redis_pid = redis.pid
        yield Deployment(
            url=url,
            admin=(ADMIN_USER, env["ADMIN_PASSWORD"]),
            workers=lambda: children(api_proc.pid),
            others=lambda: {"redis": [redis_pid]},
        )
    finally:
        stop(api)
        stop(redis)


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
def cluster_deployment(work: Path, env: dict[str, str], timeout: float) -> Iterator[Deployment]:
    """`deploy/cluster.py up` on free ports in `work`; `down` whatever happens."""
    port, redis_port, *api_ports = free_ports(5)
    args = ["--dir", str(work), "--port", str(port), "--redis-port", str(redis_port),
            "--api-ports", ",".join(map(str, api_ports)), "--env-file", str(work / ".env"),
            "--timeout", str(timeout)]  # fmt: skip
    cli = [sys.executable, str(CLUSTER)]
    # The cluster sizes its instances' workers to the host (see deploy/cluster.py).
    env = {name: value for name, value in env.items() if name != "WEB_CONCURRENCY"}
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
            return {
                "redis": _pidfile(work / "redis" / "redis.pid"),
                "nginx": nginx + [w for m in nginx for w in children(m)],
                "honcho": honcho + [c for h in honcho for c in children(h) if _is_honcho(c)],
            }

        yield Deployment(
            url=f"http://127.0.0.1:{port}",
            admin=(ADMIN_USER, env["ADMIN_PASSWORD"]),
            workers=workers,
            others=others,
        )
    finally:
        subprocess.run(
            [*cli, "down", *args], cwd=ROOT, env=env, capture_output=True, timeout=120,
            check=False,
        )  # fmt: skip
