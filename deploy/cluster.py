"""`make cluster` / `make cluster-down`: the Compose topology as local processes.

One redis-server (AOF, and the ACL and memory cap of `make run`'s), N gunicorn instances and
nginx in front, run by honcho from a generated Procfile in the background, so `up` returns
once every instance is ready and `down` stops exactly what `up` started. gunicorn and nginx
use the very configuration files of the image and Compose; only ports, addresses and paths
are generated (under --dir).

Every process runs under a small restart loop: honcho stops everything as soon as one of its
processes exits, but an instance killed on purpose (or by a crash) must be replaced, as Compose
and Kubernetes do, without taking the other instances down.

REDIS_MODE=cluster or sentinel (--redis-mode) replaces the one redis-server with a Redis
Cluster (3 primaries, 3 replicas) or a Sentinel set (primary, replica, 3 sentinels) from
deploy/redis_topology.py, started before the instances and stopped by `down`, by PID. Those
nodes are not under the restart loop: a killed primary stays down while its replica takes
over (`deploy/redis_topology.py restart` brings it back, as a replica).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import redis_topology
from dotenv import dotenv_values

from service.cli import RecordedRedis, recorded_redis
from service.devserver import (
    REDIS_API_USER,
    command_line,
    ensure_env_file,
    pid_alive,
    redis_acl,
    redis_config,
    redis_maxmemory,
    write_private,
    write_redis_record,
)

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
SECRET_NAMES = ("JWT_SECRET", "JWT_PREVIOUS_SECRETS", "ADMIN_PASSWORD", "REDIS_PASSWORD")


@dataclass(frozen=True)
class Layout:
    """Where one cluster keeps its generated files, data, logs and pids."""

    dir: Path

    @property
    def pidfile(self) -> Path:
        return self.dir / "honcho.pid"

    @property
    def log(self) -> Path:
        return self.dir / "cluster.log"

    def process_log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    @property
    def procfile(self) -> Path:
        return self.dir / "Procfile"

    @property
    def pgid_dir(self) -> Path:
        return self.dir / "pgid"

    @property
    def redis_dir(self) -> Path:
        return self.dir / "redis"

    @property
    def redis_record(self) -> Path:
        """Where `python -m service` finds this Redis (as make run's var/redis/client.env)."""
        return self.redis_dir / "client.env"

    @property
    def topology_dir(self) -> Path:
        return self.dir / "redis-topology"

    @property
    def redis_password(self) -> Path:
        return self.dir / "secrets" / "redis_password"

    @property
    def nginx_dir(self) -> Path:
        return self.dir / "nginx"

    def instance_dir(self, name: str) -> Path:
        return self.dir / name

    def gunicorn_pidfile(self, name: str) -> Path:
        return self.instance_dir(name) / "gunicorn.pid"


def _ports(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def _binary(name: str, install_hint: str) -> str:
    # Debian keeps nginx in /usr/sbin, which a non-root PATH often lacks.
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        sys.exit(f"{name} not found: {install_hint}, or use `docker compose up`")
    return found


def _running_honcho(layout: Layout) -> int | None:
    """The pid of this cluster's honcho if it still runs (a recycled pid does not count)."""
    try:
        pid = int(layout.pidfile.read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and "honcho" in command_line(pid) else None


def _app_env(env_file: Path) -> dict[str, str]:
    """The environment of the API processes: the process environment wins over `env_file`.

    A secret and its *_FILE variant are one setting, so an entry of the file never joins a
    variant the process environment already sets (the app refuses both at once).
    """
    from_file = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    for name in SECRET_NAMES:
        if name in os.environ or f"{name}_FILE" in os.environ:
            from_file.pop(name, None)
            from_file.pop(f"{name}_FILE", None)
    return {**from_file, **os.environ}


def _supervised(name: str, command: str, layout: Layout) -> str:
    """A Procfile line running `command` under a restart loop that honcho can still stop.

    The shell records its process group (every process of the line is in it, so `down` can
    stop what survives honcho), restarts the command a second after it dies, and on SIGTERM
    forwards it and waits for the command to finish its graceful shutdown. The command writes
    its own log file: piping every access-log line through honcho's Python cost more CPU
    per request than the API workers themselves.
    """
    pgid_file = shlex.quote(str(layout.pgid_dir / name))
    log_file = shlex.quote(str(layout.process_log(name)))
    return (
        f"echo $$ > {pgid_file}; "
        "trap 'kill -TERM $child 2>/dev/null; wait $child; exit 0' TERM INT; "
        f"while :; do {command} >>{log_file} 2>&1 & child=$!; wait $child; "
        f'echo "{name} exited with status $?, restarting in 1s"; sleep 1; done'
    )


def _nginx_files(layout: Layout, port: int, api_ports: list[int]) -> None:
    """The local twin of deploy/nginx/compose/: upstream servers, temp paths, listen socket."""
    env_dir = layout.nginx_dir / "env"
    env_dir.mkdir(parents=True, exist_ok=True)
    tmp = layout.nginx_dir / "tmp"
    tmp.mkdir(exist_ok=True)
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=0;\n" for p in api_ports)
    (env_dir / "http.conf").write_text(
        "# Generated by deploy/cluster.py; the Compose twin is deploy/nginx/compose/http.conf.\n"
        f"upstream api {{\n    zone api 64k;\n{servers}"
        "    keepalive 128;\n    keepalive_timeout 60s;\n}\n\n"
        + "".join(
            f"{kind}_temp_path {tmp / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        ),
        encoding="utf-8",
    )
    (env_dir / "listen.conf").write_text(
        f"# Generated by deploy/cluster.py.\nlisten 127.0.0.1:{port};\n", encoding="utf-8"
    )
    # Linked, not copied: nginx resolves `include env/...` next to the path it is given.
    link = layout.nginx_dir / "nginx.conf"
    link.unlink(missing_ok=True)
    link.symlink_to(NGINX_CONF)


def _redis_conf(layout: Layout, port: int, maxmemory: str) -> None:
    """The cluster Redis's ACL and configuration, as `make run`'s (service/devserver.py):
    the API's user `api` with the password kept in the cluster's secrets, nothing else."""
    if not layout.redis_password.exists():
        write_private(layout.redis_password, secrets.token_urlsafe(32) + "\n")
    password = layout.redis_password.read_text(encoding="utf-8").strip()
    acl_file = layout.redis_dir / "users.acl"
    write_private(acl_file, redis_acl({REDIS_API_USER: password}))
    write_private(
        layout.redis_dir / "redis.conf",
        redis_config(
            port=port,
            data_dir=layout.redis_dir,
            acl_file=acl_file,
            maxmemory=maxmemory,
            pidfile=layout.redis_dir / "redis.pid",
        ),
    )
    write_redis_record(
        layout.redis_record,
        f"redis://{REDIS_API_USER}@127.0.0.1:{port}/0",
        REDIS_PASSWORD_FILE=str(layout.redis_password),
    )


def make_run_redis(env_file: Path) -> RecordedRedis | None:
    """The Redis that a running `make run` started next to `env_file` (its `.env`), when
    REDIS_URL is set neither in the environment nor in that file: the cluster then shares it
    (and the file's REDIS_PASSWORD) instead of starting its own, as `python -m service`
    would find it."""
    if "REDIS_URL" in os.environ or "REDIS_URL" in dotenv_values(env_file):
        return None
    for found in recorded_redis(env_file.parent):
        if found.owner == "make run" and found.pid is not None:
            return found
    return None


def _start_topology(layout: Layout, mode: str, maxmemory: str) -> dict[str, str]:
    """REDIS_MODE=cluster|sentinel: start that topology (a new, empty one; the API's password
    stays the cluster's) and return the API's settings for it."""
    redis_topology.down(layout.topology_dir)  # what a crashed `up` may have left
    topology = redis_topology.TOPOLOGIES[mode](
        dir=layout.topology_dir, secrets_dir=layout.redis_password.parent, maxmemory=maxmemory
    ).start()
    print("redis: " + "\n".join(topology.describe()))
    print(
        "  a killed node stays down (its replica takes over); bring it back with "
        f"`{sys.executable} deploy/redis_topology.py restart --dir {layout.topology_dir} NODE`"
    )
    return topology.app_env()


def _procfile(layout: Layout, port: int, api_ports: list[int], redis_port: int | None) -> str:
    lines = []
    if redis_port is not None:
        redis = _binary(
            "redis-server", "`sudo apt-get install redis-server` or `brew install redis`"
        )
        conf = layout.redis_dir / "redis.conf"
        lines.append(("redis", f"{shlex.quote(redis)} {shlex.quote(str(conf))}"))
    gunicorn = Path(sys.executable).with_name("gunicorn")
    for index, api_port in enumerate(api_ports, start=1):
        name = f"api{index}"
        metrics = layout.instance_dir(name) / "metrics"
        metrics.mkdir(parents=True, exist_ok=True)
        settings = {
            "BIND": f"127.0.0.1:{api_port}",
            "INSTANCE_NAME": name,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        }
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in settings.items())
        command = (
            f"{assignments} {shlex.quote(str(gunicorn))} -c {shlex.quote(str(GUNICORN_CONF))} "
            f"--pid {shlex.quote(str(layout.gunicorn_pidfile(name)))} "
            "'service.main:create_app()'"
        )
        lines.append((name, command))
    nginx = _binary("nginx", "`sudo apt-get install nginx` or `brew install nginx`")
    nginx_dir = layout.nginx_dir
    globals_ = f"daemon off; pid {nginx_dir / 'nginx.pid'};"
    lines.append(
        (
            "nginx",
            f"{shlex.quote(nginx)} -e stderr -p {shlex.quote(str(nginx_dir))}/ "
            f"-c {shlex.quote(str(nginx_dir / 'nginx.conf'))} -g {shlex.quote(globals_)}",
        )
    )
    layout.pgid_dir.mkdir(parents=True, exist_ok=True)
    return "".join(f"{name}: {_supervised(name, cmd, layout)}\n" for name, cmd in lines)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (http://127.0.0.1)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _wait_ready(
    port: int, api_ports: list[int], timeout: float, honcho: subprocess.Popen[bytes]
) -> bool:
    """Every instance answers /readyz itself, then nginx answers it for each of them in turn.

    nginx round-robins, so N consecutive 200s through it went through every instance.
    """
    deadline = time.monotonic() + timeout
    pending = [f"http://127.0.0.1:{p}/readyz" for p in api_ports]
    while time.monotonic() < deadline and honcho.poll() is None:
        pending = [url for url in pending if _get(url) != 200]
        lb = f"http://127.0.0.1:{port}/readyz"
        if not pending and all(_get(lb) == 200 for _ in api_ports):
            return True
        time.sleep(0.5)
    return False


def up(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.dir).resolve())
    api_ports = _ports(args.api_ports)
    if (pid := _running_honcho(layout)) is not None:
        print(f"cluster already running (honcho pid {pid}) on http://127.0.0.1:{args.port}")
        return 0
    env_file = Path(args.env_file).resolve()
    redis_url_given = "REDIS_URL" in os.environ or "REDIS_URL" in dotenv_values(env_file)
    topology = None if redis_url_given or args.redis_mode == "standalone" else args.redis_mode
    shared = make_run_redis(env_file) if topology is None else None
    external_redis = shared is not None or redis_url_given or topology is not None
    wanted = [args.port, *api_ports] + ([] if external_redis else [args.redis_port])
    busy = [p for p in wanted if _port_in_use(p)]
    if busy or len(set(wanted)) != len(wanted):
        sys.exit(
            f"ports {busy or wanted} busy or repeated: choose others with --port, --api-ports "
            "and --redis-port (or CLUSTER_PORT, CLUSTER_API_PORTS, CLUSTER_REDIS_PORT), "
            "or stop a previous cluster with `make cluster-down`"
        )

    layout.dir.mkdir(parents=True, exist_ok=True)
    if ensure_env_file(env_file):
        print(f"wrote {env_file} (mode 600) with a random JWT secret and admin password")
    env = _app_env(env_file)
    if shared is not None:
        env["REDIS_URL"] = shared.url
    # The instances run in the cluster directory: a relative MODEL_DIR means the repository's.
    env["MODEL_DIR"] = str(ROOT / env.get("MODEL_DIR", "var/model"))
    env["PYTHONUNBUFFERED"] = "1"
    # The instances share this host's cores: by default their workers add up to about the
    # core count (more only adds context switches; measured in `make bench`).
    env.setdefault("WEB_CONCURRENCY", str(max(1, (os.cpu_count() or 1) // len(api_ports))))
    if topology is not None:
        try:
            env |= _start_topology(layout, topology, redis_maxmemory(env))
        except ValueError as exc:
            sys.exit(str(exc))
        env.pop("REDIS_PASSWORD", None)
        env.pop("REDIS_SENTINEL_PASSWORD", None)
    if not external_redis:
        try:
            maxmemory = redis_maxmemory(env)
        except ValueError as exc:
            sys.exit(str(exc))
        _redis_conf(layout, args.redis_port, maxmemory)
        env["REDIS_URL"] = f"redis://{REDIS_API_USER}@127.0.0.1:{args.redis_port}/0"
        env.pop("REDIS_PASSWORD", None)
        env["REDIS_PASSWORD_FILE"] = str(layout.redis_password)
    # A bad setting stops here, with the app's own message, rather than in a restart loop.
    check = "from service.infra.config import load_settings; load_settings()"
    if subprocess.run([sys.executable, "-c", check], cwd=layout.dir, env=env).returncode:
        redis_topology.down(layout.topology_dir)
        sys.exit("the API settings are invalid (see above); nothing was started")
    _nginx_files(layout, args.port, api_ports)
    layout.procfile.write_text(
        _procfile(layout, args.port, api_ports, None if external_redis else args.redis_port),
        encoding="utf-8",
    )

    with layout.log.open("ab") as log:
        # Its own session: the cluster outlives this command and the terminal's Ctrl-C.
        honcho = subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "--no-colour", "-e", "/dev/null",
             "-d", str(layout.dir), "-f", str(layout.procfile)],
            cwd=layout.dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    layout.pidfile.write_text(f"{honcho.pid}\n", encoding="utf-8")

    if not _wait_ready(args.port, api_ports, args.timeout, honcho):
        for path in sorted(layout.dir.glob("*.log")):
            tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            print(f"--- {path}\n" + "\n".join(tail), file=sys.stderr)
        print(f"cluster not ready within {args.timeout:.0f}s; stopping it", file=sys.stderr)
        down(args)
        return 1
    redis_url = (
        f"{shared.url} (make run's redis-server, pid {shared.pid}, recorded in "
        f"{shared.record}; stopping make run stops it)"
        if shared is not None
        else env["REDIS_URL"]
        if external_redis
        else f"{env['REDIS_URL']} (password in {layout.redis_password}; AOF in "
        f"{layout.redis_dir}; maxmemory {maxmemory}, noeviction)"
    )
    print(f"cluster ready: http://127.0.0.1:{args.port} (nginx, /metrics denied)")
    for index, api_port in enumerate(api_ports, start=1):
        print(f"  api{index}: http://127.0.0.1:{api_port} (metrics at /metrics)")
    print(f"  redis: {redis_url}")
    own = {"ADMIN_PASSWORD", "ADMIN_PASSWORD_FILE"} & os.environ.keys()
    where = f"{own.pop()} in your environment" if own else f"ADMIN_PASSWORD in {env_file}"
    print(f"  admin: {env.get('ADMIN_USERNAME', '(none)')}, password: {where}")
    print(f"  logs: {layout.dir}/*.log; stop with `make cluster-down`")
    return 0


def _stop_group(pgid: int, layout: Layout) -> None:
    """SIGTERM, then SIGKILL, a process group one of our Procfile lines created.

    A group outlives its leader only with its own members, and a live leader must still be
    our shell (its command line names our directory): a recycled number is left alone.
    """
    if pid_alive(pgid) and str(layout.dir) not in command_line(pgid):
        return
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def down(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.dir).resolve())
    honcho = _running_honcho(layout)
    if honcho is None and not any(layout.pgid_dir.glob("*")):
        print("cluster not running")
        layout.pidfile.unlink(missing_ok=True)
        redis_topology.down(layout.topology_dir)
        return 0
    if honcho is not None:
        # honcho forwards SIGTERM to every process group and waits for them.
        os.kill(honcho, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(honcho) and time.monotonic() < deadline:
            time.sleep(0.1)
    # Whatever survived honcho (or a honcho that died first) is stopped group by group.
    for pgid_file in sorted(layout.pgid_dir.glob("*")):
        with contextlib.suppress(ValueError, OSError):
            _stop_group(int(pgid_file.read_text()), layout)
        pgid_file.unlink(missing_ok=True)
    if honcho is not None and pid_alive(honcho):
        os.kill(honcho, signal.SIGKILL)
    layout.pidfile.unlink(missing_ok=True)
    # REDIS_MODE=cluster|sentinel: the topology's nodes, by the PIDs it recorded.
    if stopped := redis_topology.down(layout.topology_dir):
        print(f"stopped {stopped} Redis processes of {layout.topology_dir}")
    print(f"cluster stopped (logs kept in {layout.log})")
    return 0


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description="Run the Compose topology as local processes (make cluster / cluster-down).",
        epilog="Every option also reads the environment variable named in its help. "
        "Set REDIS_URL to use an existing Redis instead of starting one (a running `make "
        "run`'s Redis, recorded in var/redis/client.env, is used when REDIS_URL is set "
        "neither in the environment nor in --env-file); REDIS_MAXMEMORY caps the memory of "
        "the one it starts (default 256mb, never evicted).",
    )
    parser.add_argument("command", choices=("up", "down"))
    add = parser.add_argument
    add(
        "--dir",
        default=env("CLUSTER_DIR", str(ROOT / "var" / "cluster")),
        help="generated files, Redis data, pids and logs (CLUSTER_DIR; default var/cluster)",
    )
    add(
        "--port",
        type=int,
        default=int(env("CLUSTER_PORT", "8000")),
        help="nginx port on 127.0.0.1 (CLUSTER_PORT; default 8000)",
    )
    add(
        "--api-ports",
        default=env("CLUSTER_API_PORTS", "8001,8002,8003"),
        help="one port per API instance (CLUSTER_API_PORTS; default 8001,8002,8003)",
    )
    add(
        "--redis-port",
        type=int,
        default=int(env("CLUSTER_REDIS_PORT", "6390")),
        help="port of the cluster's own Redis (CLUSTER_REDIS_PORT; default 6390)",
    )
    add(
        "--redis-mode",
        choices=redis_topology.MODES,
        default=env("REDIS_MODE", "standalone"),
        help="standalone: one redis-server; cluster: Redis Cluster, 3 primaries and 3 "
        "replicas; sentinel: a primary, a replica and 3 sentinels (REDIS_MODE; default "
        "standalone; ignored when REDIS_URL is set)",
    )
    add(
        "--env-file",
        default=env("CLUSTER_ENV_FILE", str(ROOT / ".env")),
        help="secrets file shared with `make run`, created if absent (CLUSTER_ENV_FILE)",
    )
    add(
        "--timeout",
        type=float,
        default=float(env("CLUSTER_TIMEOUT", "90")),
        help="seconds `up` waits for readiness (CLUSTER_TIMEOUT; default 90)",
    )
    args = parser.parse_args(argv)
    return up(args) if args.command == "up" else down(args)


if __name__ == "__main__":
    sys.exit(main())
