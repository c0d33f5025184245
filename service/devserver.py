"""`make run`: the whole service on one machine, without Docker.

Writes a private `.env` on first run (random JWT secret and admin password), starts a local
redis-server (data, configuration and ACL under var/redis; its password, REDIS_PASSWORD, is
added to `.env`) unless REDIS_URL is set, then serves with gunicorn on 127.0.0.1:8000.
Ctrl-C stops everything it started.

The posture of every Redis the project starts as a local process (`make run` here, `make
cluster` in deploy/cluster.py, its Redis Cluster and Sentinel topologies in
deploy/redis_topology.py) is defined here, once: its users (REDIS_DEFAULT_USER,
REDIS_ACL_RULES and, for replicated topologies only, REDIS_TOPOLOGY_ACL_RULES, written by
`redis_acl`) and its configuration (`redis_config`: AOF, memory cap, noeviction). Compose and
Kubernetes generate the same ACL from the same rules (tests/deploy/test_redis_posture.py
checks that they agree).
"""

from __future__ import annotations

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
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

ENV_FILE = Path(".env")
DATA_DIR = Path("var/redis")
GUNICORN_CONF = Path(__file__).resolve().parents[1] / "deploy" / "gunicorn.conf.py"

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


def start_redis(password: str, maxmemory: str) -> tuple[subprocess.Popen[bytes], str]:
    """redis-server on 127.0.0.1 with the project's ACL and configuration (both files mode
    600 under var/redis; no secret on its command line); returns it and the API's URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit(
            "redis-server not found: `sudo apt-get install redis-server` (Debian/Ubuntu), "
            "`brew install redis` (macOS), or set REDIS_URL, or use `docker compose up`"
        )
    port = 6379 if _port_free(6379) else _free_port()
    data_dir = DATA_DIR.resolve()
    acl_file = data_dir / "users.acl"
    conf = data_dir / "redis.conf"
    write_private(acl_file, redis_acl({REDIS_API_USER: password}))
    write_private(
        conf,
        redis_config(port=port, data_dir=data_dir, acl_file=acl_file, maxmemory=maxmemory),
    )
    proc = subprocess.Popen(  # noqa: S603  # nosec B603 - fixed arguments, no shell
        [binary, str(conf)], stdout=subprocess.DEVNULL
    )
    for _ in range(100):
        if not _port_free(port):
            return proc, f"redis://{REDIS_API_USER}@127.0.0.1:{port}/0"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.terminate()
    sys.exit("redis-server did not start; see its output above")


def main() -> None:
    if ensure_env_file():
        print(f"wrote {ENV_FILE.resolve()} (mode 600) with a random JWT secret and admin password")
    file_env = {k: v for k, v in dotenv_values(ENV_FILE).items() if v is not None}
    env = {**file_env, **os.environ}
    redis_proc = None
    if "REDIS_URL" not in env:
        try:
            maxmemory = redis_maxmemory(env)
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
        redis_proc, env["REDIS_URL"] = start_redis(password, maxmemory)
        print(
            f"started redis-server (pid {redis_proc.pid}) at {env['REDIS_URL']} (password "
            f"REDIS_PASSWORD; maxmemory {maxmemory}, noeviction), data in var/redis"
        )
    elif "REDIS_PASSWORD" in file_env and urlsplit(env["REDIS_URL"]).username is None:
        # Written there by an earlier run that started its own Redis.
        print(
            f"note: REDIS_PASSWORD from {ENV_FILE} is sent to REDIS_URL too; remove it there "
            "if that Redis needs none"
        )
    print(
        f"serving on http://{env.get('BIND', '127.0.0.1:8000')} - log in as "
        f"{env.get('ADMIN_USERNAME', '(no admin)')} with ADMIN_PASSWORD from {ENV_FILE.resolve()}"
    )
    server = subprocess.Popen(  # noqa: S603  # nosec B603 - fixed arguments, no shell
        [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "service.main:create_app()"],
        env=env,
    )

    def stop(signum: int, _frame: object) -> None:
        server.send_signal(signal.SIGTERM)

    # Explicit handlers: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        server.wait()
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()
            print("stopped redis-server")
    sys.exit(server.returncode if server.returncode and server.returncode > 0 else 0)


if __name__ == "__main__":
    main()
