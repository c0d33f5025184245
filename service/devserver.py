"""`make run`: the whole service on one machine, without Docker.

Writes a private `.env` on first run (random JWT secret and admin password), starts a local
redis-server (data, configuration and ACL under var/redis; its password, REDIS_PASSWORD, is
added to `.env`) unless REDIS_URL is set, then serves with gunicorn on 127.0.0.1:8000.
Ctrl-C stops everything it started.

Before it starts anything it checks the configuration (the app's own one-line message) and
refuses, naming the process, when BIND's port or var/redis is already in use (a second
`make run`). The URL of the Redis it starts is recorded in var/redis/client.env, so `python
-m service users ...` and `make cluster` use that Redis when REDIS_URL is not set. It says
"serving on" once the server answers /readyz, not before.

The posture of every Redis the project starts as a local process (`make run` here, `make
cluster` in deploy/cluster.py, its Redis Cluster and Sentinel topologies in
deploy/redis_topology.py) is defined here, once: its users (REDIS_DEFAULT_USER,
REDIS_ACL_RULES and, for replicated topologies only, REDIS_TOPOLOGY_ACL_RULES, written by
`redis_acl`) and its configuration (`redis_config`: AOF, memory cap, noeviction). Compose and
Kubernetes generate the same ACL from the same rules (tests/deploy/test_redis_posture.py
checks that they agree).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess  # nosec B404 - starts redis-server and gunicorn, fixed arguments
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from service.infra.config import load_settings

ENV_FILE = Path(".env")
DATA_DIR = Path("var/redis")
# What a client needs to reach the Redis `make run` started (dotenv syntax, no secret): read
# by `python -m service` (service/cli.py, REDIS_RECORDS) and `make cluster` when REDIS_URL is
# set neither in the environment nor in `.env`. Written once that Redis answers; kept after
# it stops, so that a client finds it not running rather than silently using another one.
REDIS_RECORD = DATA_DIR / "client.env"
REDIS_PIDFILE = DATA_DIR / "redis.pid"
# How long `make run` waits for the server to answer /readyz before it says so.
READY_TIMEOUT = 120.0
GUNICORN_CONF = Path(__file__).resolve().parents[1] / "deploy" / "gunicorn.conf.py"
# The service under gunicorn with the project's configuration, as the image runs it.
GUNICORN_COMMAND = (
    sys.executable,
    "-m",
    "gunicorn",
    "-c",
    str(GUNICORN_CONF),
    "service.main:create_app()",
)

# The Redis user the API connects as (REDIS_URL redis://api@host:port/0, its password in
# REDIS_PASSWORD[_FILE]).
REDIS_API_USER = "api"
# Every Redis user and its ACL rules; the `default` user is switched off. One entry per
# user. redis-py's RedisCluster also needs CLUSTER SLOTS, CLUSTER SHARDS, COMMAND and
# READONLY, which are not @dangerous: `+@all` already allows them (and TIME, which the Lua
# scripts call: commands run by a script are checked against the same rules).
REDIS_ACL_RULES: dict[str, str] = {
    # The API: only its own keys (every key it writes starts with `sma:`), no pub/sub
    # channels, every command except the @dangerous ones (FLUSHALL, FLUSHDB, CONFIG, KEYS,
    # DEBUG, SHUTDOWN, ACL, MONITOR, REPLICAOF, MIGRATE, CLIENT KILL/LIST, SAVE, ...), plus
    # INFO (readiness reads its memory section) and CLIENT SETNAME (redis-py's client_name).
    REDIS_API_USER: "~sma:* resetchannels +@all -@dangerous +info +client|setname",
}
# The users a replicated topology (Redis Cluster, Sentinel) adds on every server, next to
# REDIS_ACL_RULES; none of them is ever given to the API. ACLs are per server and never
# replicated, so every server of a topology loads the same file.
REDIS_REPLICA_USER = "replica"
REDIS_SENTINEL_USER = "sentinel"
REDIS_ADMIN_USER = "admin"
REDIS_TOPOLOGY_ACL_RULES: dict[str, str] = {
    # `masteruser` of every server (after a failover any of them may be a replica): what a
    # replica sends its primary to stay in sync, nothing else, no key.
    REDIS_REPLICA_USER: "resetchannels -@all +psync +replconf +ping",
    # What the sentinels run on the servers they watch (Redis docs, "Redis Sentinel and ACL"):
    # INFO and ROLE to watch, the hello channel to find each other, REPLICAOF and CONFIG
    # REWRITE (in MULTI/EXEC) to fail over, CLIENT KILL to drop the old master's clients.
    REDIS_SENTINEL_USER: "allchannels -@all +multi +slaveof +ping +exec +subscribe "
    "+config|rewrite +role +publish +info +client|setname +client|kill +script|kill",
    # Creating the cluster (CLUSTER ADDSLOTSRANGE, MEET, REPLICATE), health checks, and an
    # operator's redis-cli: everything. Its password is kept apart from the API's.
    REDIS_ADMIN_USER: "~* &* +@all",
}
# The memory cap of a local Redis unless REDIS_MAXMEMORY says otherwise. With noeviction a
# full Redis refuses writes (the API answers 503) but still deletes: users and sessions are
# never evicted, and logout and revocation keep working.
REDIS_MAXMEMORY_DEFAULT = "256mb"
_MEMORY = re.compile(r"[1-9][0-9]*(b|k|kb|m|mb|g|gb)?", re.IGNORECASE)


# The `default` user: off (no one can log in as it, and connections that have not logged in
# can run nothing) and without a password, but not without permissions: Redis replays the
# AOF as `default`, and Redis 7 re-checks each MULTI/EXEC block of it (every script's writes
# are one) against that user's rules, silently dropping the blocks it refuses: a restart
# would lose users and revocations.
REDIS_DEFAULT_USER = "user default off resetpass ~* +@all"


def redis_acl(passwords: Mapping[str, str], rules: Mapping[str, str] = REDIS_ACL_RULES) -> str:
    """The ACL file: REDIS_DEFAULT_USER, then one line per user of `rules` (REDIS_ACL_RULES,
    or that and REDIS_TOPOLOGY_ACL_RULES) with the SHA-256 of its password, never the
    password."""
    lines = [REDIS_DEFAULT_USER]
    for user, user_rules in rules.items():
        digest = hashlib.sha256(passwords[user].encode()).hexdigest()
        lines.append(f"user {user} on #{digest} {user_rules}")
    return "\n".join(lines) + "\n"


def redis_maxmemory(env: Mapping[str, str]) -> str:
    """REDIS_MAXMEMORY (a Redis size such as 256mb or 1gb), or the default."""
    value = env.get("REDIS_MAXMEMORY", REDIS_MAXMEMORY_DEFAULT).strip()
    if not _MEMORY.fullmatch(value):
        raise ValueError(
            f"REDIS_MAXMEMORY={value!r}: expected a size such as 256mb or 1gb "
            "(b, k, kb, m, mb, g, gb), greater than 0"
        )
    return value


def _quoted(path: Path) -> str:
    escaped = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def redis_config(
    *, port: int, data_dir: Path, acl_file: Path, maxmemory: str, pidfile: Path | None = None
) -> str:
    """redis.conf of a local Redis: loopback only, the ACL file, AOF, capped memory that is
    never evicted."""
    lines = [
        "# Generated by service/devserver.py at every start; edits are lost.",
        "bind 127.0.0.1",
        f"port {port}",
        f"dir {_quoted(data_dir)}",
        f"aclfile {_quoted(acl_file)}",
        *([f"pidfile {_quoted(pidfile)}"] if pidfile is not None else []),
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        "# Full: writes are refused (the API answers 503), deletes still work; nothing is",
        "# evicted, so users, sessions and revocations are never lost to memory pressure.",
        f"maxmemory {maxmemory}",
        "maxmemory-policy noeviction",
    ]
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only (mode 600, also when it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def ensure_env_file(path: Path = ENV_FILE) -> bool:
    """Create `.env` (mode 600) with fresh secrets if absent; returns whether it was created."""
    if path.exists():
        return False
    content = (
        "# Written by `make run`. Keep private; the process environment overrides it.\n"
        f"JWT_SECRET={secrets.token_urlsafe(48)}\n"
        "ADMIN_USERNAME=admin\n"
        f"ADMIN_PASSWORD={secrets.token_urlsafe(18)}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    return True


def ensure_env_value(path: Path, name: str, value: str) -> bool:
    """Append `name=value` to an existing `.env` that does not set `name` yet (older files
    predate the variable); returns whether it did. The rest of the file is left as it is."""
    if name in dotenv_values(path):
        return False
    text = path.read_text(encoding="utf-8")
    with path.open("a", encoding="utf-8") as handle:
        handle.write(("" if text.endswith("\n") or not text else "\n") + f"{name}={value}\n")
    return True


def _app_redis_password(file_env: Mapping[str, str]) -> str | None:
    """The Redis password the app will use, as its settings choose it: the process
    environment before `.env`, REDIS_PASSWORD_FILE before REDIS_PASSWORD."""
    for source in (os.environ, file_env):
        if "REDIS_PASSWORD_FILE" in source:
            path = Path(source["REDIS_PASSWORD_FILE"])
            try:
                return path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                sys.exit(f"REDIS_PASSWORD_FILE: cannot read {path}: {exc.strerror}")
        if "REDIS_PASSWORD" in source:
            return source["REDIS_PASSWORD"]
    return None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command_line(pid: int) -> str:
    """The command line of `pid` ("" when it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace").strip()
    except FileNotFoundError:  # no /proc (macOS), or no such process
        ps = ["ps", "-o", "command=", "-p", str(pid)]
        try:
            done = subprocess.run(ps, capture_output=True, text=True, check=False)  # noqa: S603  # nosec B603
        except OSError:
            return ""
        return done.stdout.strip()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(pid: int) -> str:
    command = command_line(pid)
    return f"pid {pid}" + (f" ({command})" if command else "")


def _listening_pids(port: int) -> list[int]:
    """The processes with a listening TCP socket on `port` (Linux; those this user may see)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN; the inode is field 9.
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(f"socket:[{fields[9]}]")
    pids = []
    if inodes:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return sorted(pids)


def bind_address(bind: str) -> tuple[str, int] | None:
    """(host, port) of a gunicorn BIND such as 127.0.0.1:8000 or [::1]:8000; None for a unix
    socket or an address without a port."""
    if bind.startswith(("unix:", "fd://")) or ":" not in bind:
        return None
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104  # nosec B104 - only parsed, never bound
    try:
        return host, int(port)
    except ValueError:
        return None


def port_holder(host: str, port: int) -> str | None:
    """None when `host:port` can be bound (as gunicorn binds it, SO_REUSEADDR); otherwise what
    holds it: "pid N (command)" when this user can tell, else "another process"."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return None  # not ours to judge (a foreign address...): gunicorn will say
        else:
            return None
    pids = _listening_pids(port)
    if not pids:
        return "another process"
    # A pre-forking server's workers share its socket: name the processes whose parent
    # does not hold it too (gunicorn's master), and count the others.
    roots = [pid for pid in pids if _parent(pid) not in pids] or pids
    text = ", ".join(_describe(pid) for pid in roots)
    if children := len(pids) - len(roots):
        text += f" and {children} child process{'es' if children > 1 else ''}"
    return text


def _parent(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None


def data_dir_user(data_dir: Path) -> str | None:
    """A running redis-server that uses `data_dir` (its pidfile there names a live redis, or,
    on Linux, a redis-server works in that directory), as "pid N (command)"; else None."""
    try:
        pid = int((data_dir / REDIS_PIDFILE.name).read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if pid > 0 and pid_alive(pid) and "redis" in command_line(pid):
        return _describe(pid)
    wanted = data_dir.resolve()
    for proc in Path("/proc").iterdir() if Path("/proc/self").exists() else ():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() == "redis-server" and (
                Path(os.readlink(proc / "cwd")) == wanted
            ):
                return _describe(int(proc.name))
        except OSError:
            continue
    return None


def redis_port(env: Mapping[str, str]) -> int:
    """RUN_REDIS_PORT, else 6379 when it is free, else any free port."""
    if value := env.get("RUN_REDIS_PORT", "").strip():
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise ValueError(f"RUN_REDIS_PORT={value!r}: expected a port number")
        return int(value)
    return 6379 if _port_free(6379) else _free_port()


def write_redis_record(record: Path, url: str, **extra: str) -> None:
    """Record where the Redis a runner started listens (see REDIS_RECORD): no secret."""
    lines = [
        "# Written by the runner that started this Redis (`make run`, `make cluster`).",
        "# Read by `python -m service` and `make cluster` when REDIS_URL is not set.",
        f"REDIS_URL={url}",
        *(f"{name}={value}" for name, value in extra.items()),
    ]
    write_private(record, "\n".join(lines) + "\n")


def start_redis(password: str, maxmemory: str, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """redis-server on 127.0.0.1:`port` with the project's ACL and configuration (both files
    mode 600 under var/redis; no secret on its command line); returns it and the API's URL,
    which it records in REDIS_RECORD once Redis answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit(
            "redis-server not found: `sudo apt-get install redis-server` (Debian/Ubuntu), "
            "`brew install redis` (macOS), or set REDIS_URL, or use `docker compose up`"
        )
    data_dir = DATA_DIR.resolve()
    acl_file = data_dir / "users.acl"
    conf = data_dir / "redis.conf"
    write_private(acl_file, redis_acl({REDIS_API_USER: password}))
    write_private(
        conf,
        redis_config(
            port=port,
            data_dir=data_dir,
            acl_file=acl_file,
            maxmemory=maxmemory,
            pidfile=data_dir / REDIS_PIDFILE.name,
        ),
    )
    proc = subprocess.Popen(  # noqa: S603  # nosec B603 - fixed arguments, no shell
        [binary, str(conf)], stdout=subprocess.DEVNULL
    )
    url = f"redis://{REDIS_API_USER}@127.0.0.1:{port}/0"
    for _ in range(100):
        if not _port_free(port):
            write_redis_record(data_dir / REDIS_RECORD.name, url)
            return proc, url
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.terminate()
    proc.wait()
    sys.exit("redis-server did not start; see its output above")


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310  # nosec B310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_serving(server: subprocess.Popen[bytes], base: str, timeout: float) -> bool:
    """Wait until `base`/readyz answers 200; False if the server exits first or not in time
    (then it says what it saw)."""
    deadline = time.monotonic() + timeout
    last = 0
    while server.poll() is None:
        last = _status(f"{base}/readyz")
        if last == 200:
            return True
        if time.monotonic() > deadline:
            seen = f"GET /readyz answers {last}" if last else "nothing answers"
            print(f"not ready after {timeout:.0f}s at {base} ({seen}); still waiting")
            deadline = float("inf")
        time.sleep(0.2)
    return False


def _client_base(bind: str) -> str:
    address = bind_address(bind)
    if address is None:
        return f"http://{bind}"
    host, port = address
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104  # nosec B104
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def main() -> None:
    if ensure_env_file():
        print(f"wrote {ENV_FILE.resolve()} (mode 600) with a random JWT secret and admin password")
    file_env = {k: v for k, v in dotenv_values(ENV_FILE).items() if v is not None}
    env = {**file_env, **os.environ}
    own_redis: tuple[str, str, int] | None = None  # password, maxmemory, port
    if "REDIS_URL" not in env:
        try:
            maxmemory = redis_maxmemory(env)
            port = redis_port(env)
        except ValueError as exc:
            sys.exit(str(exc))
        password = _app_redis_password(file_env)
        if password is None:
            password = secrets.token_urlsafe(32)
            ensure_env_value(ENV_FILE, "REDIS_PASSWORD", password)
            env["REDIS_PASSWORD"] = password
            print(f"added REDIS_PASSWORD (its Redis's `api` user) to {ENV_FILE.resolve()}")
        if not password:
            sys.exit("REDIS_PASSWORD is empty: remove it (a random one is generated) or set one")
        env["REDIS_URL"] = f"redis://{REDIS_API_USER}@127.0.0.1:{port}/0"
        own_redis = (password, maxmemory, port)
    elif "REDIS_PASSWORD" in file_env and urlsplit(env["REDIS_URL"]).username is None:
        # Written there by an earlier run that started its own Redis.
        print(
            f"note: REDIS_PASSWORD from {ENV_FILE} is sent to REDIS_URL too; remove it there "
            "if that Redis needs none"
        )

    # The configuration gunicorn will see, checked by the app itself (one line on error),
    # before anything starts.
    os.environ.update(env)
    bind = load_settings().bind
    address = bind_address(bind)
    if address is not None and (holder := port_holder(*address)) is not None:
        sys.exit(
            f"{bind} is already in use by {holder}: stop it (another `make run`?), or serve "
            "elsewhere with BIND=127.0.0.1:PORT"
        )
    redis_proc = None
    if own_redis is not None:
        password, maxmemory, port = own_redis
        if (user := data_dir_user(DATA_DIR)) is not None:
            sys.exit(
                f"{DATA_DIR.resolve()} is already in use by redis-server {user}: another "
                "`make run` is running here; stop it first (Ctrl-C in its terminal)"
            )
        if not _port_free(port):
            sys.exit(f"RUN_REDIS_PORT={port} is already in use: choose another or unset it")
        redis_proc, env["REDIS_URL"] = start_redis(password, maxmemory, port)
        print(
            f"started redis-server (pid {redis_proc.pid}) at {env['REDIS_URL']} (password "
            f"REDIS_PASSWORD; maxmemory {maxmemory}, noeviction), data in var/redis; "
            f"recorded in {REDIS_RECORD} for `python -m service` and `make cluster`"
        )
    try:
        server = subprocess.Popen(  # noqa: S603  # nosec B603 - fixed arguments, no shell
            GUNICORN_COMMAND, env=env
        )

        def stop(signum: int, _frame: object) -> None:
            server.send_signal(signal.SIGTERM)

        # Explicit handlers: a shell that starts us in the background leaves SIGINT ignored.
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        base = _client_base(bind)
        if wait_serving(server, base, READY_TIMEOUT):
            print(
                f"serving on {base} - log in as {env.get('ADMIN_USERNAME', '(no admin)')} "
                f"with ADMIN_PASSWORD from {ENV_FILE.resolve()}",
                flush=True,
            )
        elif server.wait() > 0:
            print(f"gunicorn exited with status {server.returncode} before serving (see above)")
        server.wait()
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()
            print("stopped redis-server")
    sys.exit(server.returncode if server.returncode and server.returncode > 0 else 0)


if __name__ == "__main__":
    main()
