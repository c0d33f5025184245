"""Local Redis topologies on 127.0.0.1: a Redis Cluster (3 primaries, 3 replicas), a
Sentinel set (a primary, a replica, 3 sentinels) and a standalone server.

Why: the service runs against REDIS_MODE=standalone|cluster|sentinel (service/infra/redis.py),
and what a failover costs it (a few seconds of 503s; never a 500, a hung request or a revoked
token that comes back) only shows against real servers. `make cluster REDIS_MODE=cluster|
sentinel` (deploy/cluster.py) and the tests (tests/support/topologies.py) start them here.

Posture, that of every Redis the project starts (service/devserver.py): `redis_config` (AOF,
memory cap with noeviction, loopback only) for every server; ACL users only, from one file
that every server loads (ACLs are per server, never replicated): `default` off, the API's
`api` (REDIS_ACL_RULES) and the users of REDIS_TOPOLOGY_ACL_RULES (`replica` for
replication, `sentinel` for the sentinels, `admin` for this module and redis-cli). Each
password is a random one in its own file of mode 600 in the secrets directory; the ACL file
holds only SHA-256s. What must hold a password in clear (`masterauth`, the sentinels'
`auth-pass` and `requirepass`) is in config files of mode 600. No password is ever on a
command line. The cluster bus (`cluster-port`) has no authentication: it listens on loopback.

Settings: `cluster-node-timeout 1000` and `cluster-require-full-coverage no` (a failing
primary costs only its own slots, for about 2-3 s); sentinel `down-after-milliseconds 1000`,
`failover-timeout 3000`, quorum 2.

Nothing restarts a killed node: the cluster or the sentinels promote its replica instead,
which is what a failover is. `restart NODE` starts one again on its ports: a cluster node
rejoins as a replica by itself; a former sentinel master is started with `replicaof` the
current master (started as it was, it would be an empty, writable master for about 10 s,
until a sentinel converted it). Every topology starts empty: node directories are wiped.

Ports come from the kernel (binding port 0); a node that loses its port to another process
before binding it is started again on new ones. Processes run in their own sessions and are
stopped by the PIDs this module started (recorded in topology.json), never by name.

    python deploy/redis_topology.py up --mode cluster --dir var/topology
    python deploy/redis_topology.py status --dir var/topology
    python deploy/redis_topology.py restart --dir var/topology node0
    python deploy/redis_topology.py down --dir var/topology
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from service.devserver import (
    REDIS_ACL_RULES,
    REDIS_ADMIN_USER,
    REDIS_API_USER,
    REDIS_MAXMEMORY_DEFAULT,
    REDIS_REPLICA_USER,
    REDIS_SENTINEL_USER,
    REDIS_TOPOLOGY_ACL_RULES,
    redis_acl,
    redis_config,
    write_private,
)

HOST = "127.0.0.1"
MODES = ("standalone", "cluster", "sentinel")
MASTER_NAME = "mymaster"
STATE_FILE = "topology.json"
SLOTS = 16384
CLUSTER_NODE_TIMEOUT_MS = 1000
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 3000

# Each user's password file in the secrets directory. `redis_password` is the API's (the
# name `make cluster` always gave it); REDIS_SENTINEL_PASSWORD_FILE is the sentinels' own.
PASSWORD_FILES = {
    REDIS_API_USER: "redis_password",
    REDIS_ADMIN_USER: "redis_admin_password",
    REDIS_REPLICA_USER: "redis_replica_password",
    REDIS_SENTINEL_USER: "redis_sentinel_user_password",
}
SENTINEL_PASSWORD_FILE = "redis_sentinel_password"  # noqa: S105 - a file name

Kind = Literal["server", "sentinel"]


def log(message: str) -> None:
    print(f"redis-topology: {message}", file=sys.stderr, flush=True)


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    """Poll `check` until it holds; connection errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s (last error: {last!r})")


_handed_out: set[int] = set()


def free_port() -> int:
    """A port the kernel just gave to a socket bound to port 0, never one this process handed
    out before. Another process may still take it before Redis binds it: `launch_all` sees
    that and starts the node again on new ports."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def runs_redis(pid: int) -> bool:
    """Whether `pid` is a live redis-server or redis-sentinel (not a zombie, and not a number
    the system has since given to another program)."""
    if pid <= 0:
        return False
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (proc / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError):
            return False
    else:  # no /proc (macOS)
        ps = ["ps", "-o", "stat=,command=", "-p", str(pid)]
        out = subprocess.run(ps, capture_output=True, text=True, check=False).stdout.strip()
        state, _, command = out.partition(" ")
        if not out:
            return False
    return not state.startswith("Z") and ("redis-server" in command or "redis-sentinel" in command)


def _quoted(path: Path) -> str:
    escaped = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def command(client: redis.Redis, *args: str | int) -> Any:
    """One raw command (redis-py leaves `execute_command` untyped)."""
    execute: Callable[..., Any] = client.execute_command
    return execute(*args)


@dataclass(frozen=True)
class Secrets:
    """The password files of a topology's users (mode 600), created random when missing."""

    dir: Path

    def path(self, user: str) -> Path:
        return self.dir / PASSWORD_FILES[user]

    @property
    def sentinel_path(self) -> Path:
        return self.dir / SENTINEL_PASSWORD_FILE

    def _read_or_create(self, path: Path) -> str:
        if not path.exists():
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(path, secrets.token_urlsafe(32) + "\n")
        return path.read_text(encoding="utf-8").strip()

    def password(self, user: str) -> str:
        return self._read_or_create(self.path(user))

    def sentinel_password(self) -> str:
        return self._read_or_create(self.sentinel_path)


@dataclass
class Node:
    """One redis-server or redis-sentinel process, in its own directory."""

    name: str
    kind: Kind
    dir: Path
    port: int = 0
    bus_port: int = 0
    pid: int = 0
    # Set when this process started it; a topology attached from its state file has none.
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def conf(self) -> Path:
        return self.dir / ("sentinel.conf" if self.kind == "sentinel" else "redis.conf")

    @property
    def logfile(self) -> Path:
        return self.dir / "redis.log"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def alive(self) -> bool:
        if self.process is not None and self.process.pid == self.pid:
            return self.process.poll() is None
        return runs_redis(self.pid)

    def launch(self) -> None:
        program = "redis-sentinel" if self.kind == "sentinel" else "redis-server"
        binary = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/local/sbin")
        if binary is None:
            package = "redis-sentinel" if self.kind == "sentinel" else "redis-server"
            raise RuntimeError(f"{program} not found: `sudo apt-get install {package}`")
        with (self.dir / "stderr.log").open("ab") as err:
            self.process = subprocess.Popen(  # nosec B603 - our binary, our config file
                [binary, str(self.conf)],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # outlives its starter, deaf to its terminal's Ctrl-C
                # Redis and Sentinel rewrite their config files (CONFIG REWRITE, failovers)
                # with mode 0644 & ~umask: with 077 those holding passwords stay private.
                umask=0o077,
            )
        self.pid = self.process.pid

    def send(self, sig: signal.Signals) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait_gone(self, timeout: float) -> bool:
        """Wait until the process has exited (reaping it when this process started it)."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(1)
        return True

    def state(self) -> dict[str, Any]:
        keys = ("name", "kind", "port", "bus_port", "pid")
        return {key: getattr(self, key) for key in keys} | {"dir": str(self.dir)}


@dataclass
class Topology:
    """What every topology shares: secrets and ACL, configuration files, starting with a
    port-collision retry, stopping by PID, the state file, management clients."""

    mode: ClassVar[str] = "standalone"

    dir: Path
    secrets_dir: Path | None = None
    maxmemory: str = REDIS_MAXMEMORY_DEFAULT
    ready_timeout: float = 30.0
    nodes: list[Node] = field(default_factory=list)

    # Topology-specific parts.

    def acl_rules(self) -> dict[str, str]:
        return REDIS_ACL_RULES | {REDIS_ADMIN_USER: REDIS_TOPOLOGY_ACL_RULES[REDIS_ADMIN_USER]}

    def server_lines(self, node: Node) -> list[str]:
        """Configuration a server gets after `redis_config`'s."""
        return []

    def sentinel_lines(self, node: Node) -> list[str]:
        raise NotImplementedError

    def _start(self) -> None:
        node = Node("redis0", "server", self.dir / "redis0")
        self.nodes = [node]
        self.launch_all([node])

    def wait_healthy(self, timeout: float = 30) -> float:
        t0 = time.monotonic()
        wait_for("redis answering", lambda: self._answers(self.nodes[0]), timeout)
        return time.monotonic() - t0

    def app_env(self) -> dict[str, str]:
        """The API's settings for this topology (REDIS_MODE, REDIS_URL, ...)."""
        return {
            "REDIS_MODE": self.mode,
            "REDIS_URL": f"redis://{REDIS_API_USER}@{self.servers()[0].address}/0",
            "REDIS_PASSWORD_FILE": str(self.secrets.path(REDIS_API_USER)),
        }

    def describe(self) -> list[str]:
        return [f"standalone redis-server at {self.nodes[0].address}"]

    # Common.

    @property
    def secrets(self) -> Secrets:
        return Secrets(self.secrets_dir or self.dir / "secrets")

    @property
    def acl_file(self) -> Path:
        return self.dir / "users.acl"

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    def start(self) -> Self:
        t0 = time.monotonic()
        self.dir = self.dir.resolve()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        passwords = {user: self.secrets.password(user) for user in self.acl_rules()}
        write_private(self.acl_file, redis_acl(passwords, self.acl_rules()))
        try:
            self._start()
            self.save_state()
        except BaseException:
            self.stop()
            raise
        log(f"{self.mode} up in {time.monotonic() - t0:.1f}s")
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to every live node, SIGKILL to what is left after `grace` seconds."""
        for node in self.nodes:
            node.send(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for node in self.nodes:
            if not node.wait_gone(max(0.0, deadline - time.monotonic())):
                node.send(signal.SIGKILL)
                node.wait_gone(5)
        self.state_file.unlink(missing_ok=True)

    def save_state(self) -> None:
        state = {
            "mode": self.mode,
            "secrets_dir": str(self.secrets.dir),
            "maxmemory": self.maxmemory,
            "nodes": [node.state() for node in self.nodes],
        }
        write_private(self.state_file, json.dumps(state, indent=2) + "\n")

    def servers(self) -> list[Node]:
        return [node for node in self.nodes if node.kind == "server"]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if name in (node.name, str(node.pid), node.address, str(node.port)):
                return node
        raise KeyError(f"no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def node_by_port(self, port: int) -> Node:
        return self.node(str(port))

    def node_by_pid(self, pid: int) -> Node:
        return self.node(str(pid))

    def client(self, node: Node, timeout: float = 1.0) -> redis.Redis:
        """A management connection: `admin` on a server, the sentinels' password on a
        sentinel; no retries, so a dead node answers at once."""
        if node.kind == "sentinel":
            username, password = None, self.secrets.sentinel_password()
        else:
            username, password = REDIS_ADMIN_USER, self.secrets.password(REDIS_ADMIN_USER)
        return redis.Redis(
            host=HOST,
            port=node.port,
            username=username,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )

    def role(self, node: Node) -> str:
        with self.client(node) as c:
            return str(c.info("replication")["role"])

    def write_config(self, node: Node) -> None:
        node.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if node.kind == "sentinel":
            lines = [
                "# Generated by deploy/redis_topology.py; the sentinel rewrites it.",
                f"bind {HOST}",
                f"port {node.port}",
                f"dir {_quoted(node.dir)}",
                *self.sentinel_lines(node),
            ]
            text = ""
        else:
            text = redis_config(
                port=node.port, data_dir=node.dir, acl_file=self.acl_file, maxmemory=self.maxmemory
            )
            lines = self.server_lines(node)
        lines += ["daemonize no", f"logfile {_quoted(node.logfile)}"]
        write_private(node.conf, text + "\n".join(lines) + "\n")

    def replication_lines(self) -> list[str]:
        """Every server of a replicated topology: any of them may be a replica one day."""
        return [
            f"masteruser {REDIS_REPLICA_USER}",
            f"masterauth {self.secrets.password(REDIS_REPLICA_USER)}",
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",  # the default 5 s would delay every full sync
        ]

    def wait_replicated(self, primary: Node, timeout: float = 10) -> None:
        """Wait until every replica of `primary` has received everything `primary` had
        written when this was called (replication is asynchronous)."""
        with self.client(primary) as c:
            target = int(c.info("replication")["master_repl_offset"])

        def caught_up() -> bool:
            with self.client(primary) as c:
                replication = c.info("replication")
            offsets = [
                int(value["offset"])
                for key, value in replication.items()
                if key.startswith("slave") and isinstance(value, dict)
            ]
            return bool(offsets) and min(offsets) >= target

        wait_for(f"replicas of {primary.name} in sync", caught_up, timeout, interval=0.01)

    def _answers(self, node: Node) -> bool:
        """Our process answers on the node's port (not another one that took the port)."""
        with self.client(node, timeout=0.5) as c:
            return int(c.info("server")["process_id"]) == node.pid

    def launch_all(self, nodes: Sequence[Node], bus: bool = False) -> None:
        """Fresh directories, ports, configs; start every node, then wait until each
        answers, starting one again on new ports when its port was taken meanwhile."""
        for node in nodes:
            if node.dir.exists():
                shutil.rmtree(node.dir)
            self._assign_ports(node, bus)
            node.launch()
        for node in nodes:
            for attempt in range(5):
                deadline = time.monotonic() + self.ready_timeout
                while node.alive() and time.monotonic() < deadline:
                    with contextlib.suppress(redis.RedisError, OSError):
                        if self._answers(node):
                            break
                    time.sleep(0.01)
                if node.alive():
                    break
                output = "".join(
                    path.read_text(errors="replace")[-600:]
                    for path in (node.logfile, node.dir / "stderr.log")
                    if path.exists()
                )
                if "in use" not in output or attempt == 4:
                    raise RuntimeError(f"{node.name} exited at start-up: {output}")
                log(f"{node.name}: port {node.port} taken meanwhile, trying others")
                self._assign_ports(node, bus)
                node.launch()
            if not node.alive():  # pragma: no cover - the loop above raises first
                raise RuntimeError(f"{node.name} did not start")

    def _assign_ports(self, node: Node, bus: bool) -> None:
        node.port = free_port()
        if bus:
            node.bus_port = free_port()
        self.write_config(node)

    def kill(self, pid: int) -> Node:
        """kill -9 one of our nodes; returns it (for `restart`)."""
        node = self.node_by_pid(pid)
        node.send(signal.SIGKILL)
        if not node.wait_gone(5):
            raise RuntimeError(f"{node.name} (pid {pid}) survived SIGKILL")
        return node

    def shutdown(self, node: Node, timeout: float = 10) -> None:
        """A clean stop (SIGTERM: the AOF is synced), e.g. before `restart`."""
        node.send(signal.SIGTERM)
        if not node.wait_gone(timeout):
            raise RuntimeError(f"{node.name} did not stop within {timeout:.0f}s")

    def before_restart(self, node: Node) -> None:
        """Adjust a stopped node's configuration before it starts again."""

    def restart(self, node: Node, timeout: float = 10) -> None:
        """Start a stopped or killed node again, on its ports, and wait until it answers."""
        if node.alive():
            raise RuntimeError(f"{node.name} is still running")
        self.before_restart(node)
        node.launch()
        wait_for(f"{node.name} answering", lambda: node.alive() and self._answers(node), timeout)
        self.save_state()

    def restart_servers(self, timeout: float = 30) -> None:
        """Stop every server cleanly and start them all again (from their AOF)."""
        for node in self.servers():
            node.send(signal.SIGTERM)
        for node in self.servers():
            if not node.wait_gone(timeout):
                raise RuntimeError(f"{node.name} did not stop")
        for node in self.servers():
            self.restart(node)
        self.wait_healthy(timeout)


@dataclass
class RedisStandalone(Topology):
    """One redis-server: `make cluster`'s own Redis, with the module's management user."""

    mode: ClassVar[str] = "standalone"


@dataclass
class RedisCluster(Topology):
    """A Redis Cluster: `primaries` primaries with `replicas_per_primary` replicas each."""

    mode: ClassVar[str] = "cluster"
    primaries: int = 3
    replicas_per_primary: int = 1

    def acl_rules(self) -> dict[str, str]:
        replica = {REDIS_REPLICA_USER: REDIS_TOPOLOGY_ACL_RULES[REDIS_REPLICA_USER]}
        return super().acl_rules() | replica

    def server_lines(self, node: Node) -> list[str]:
        return [
            *self.replication_lines(),
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-port {node.bus_port}",
            f"cluster-node-timeout {CLUSTER_NODE_TIMEOUT_MS}",
            # A failing primary costs its own slots only, not the whole cluster.
            "cluster-require-full-coverage no",
        ]

    def _start(self) -> None:
        count = self.primaries * (1 + self.replicas_per_primary)
        self.nodes = [Node(f"node{i}", "server", self.dir / f"node{i}") for i in range(count)]
        self.launch_all(self.nodes, bus=True)
        primaries, replicas = self.nodes[: self.primaries], self.nodes[self.primaries :]
        per = SLOTS // self.primaries
        for i, node in enumerate(primaries):
            last = SLOTS - 1 if i == self.primaries - 1 else (i + 1) * per - 1
            with self.client(node) as c:
                command(c, "CLUSTER", "ADDSLOTSRANGE", i * per, last)
                command(c, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        with self.client(self.nodes[0]) as c:
            for node in self.nodes[1:]:
                command(c, "CLUSTER", "MEET", HOST, node.port, node.bus_port)
        wait_for("every node to know every other", self._all_met, 20)
        for i, node in enumerate(replicas):
            primary = primaries[i % self.primaries]
            with self.client(primary) as c:
                primary_id = str(command(c, "CLUSTER", "MYID"))
            with self.client(node) as c:
                command(c, "CLUSTER", "REPLICATE", primary_id)
        # A new primary serves only 2 s after it started (Redis's CLUSTER_WRITABLE_DELAY).
        self.wait_healthy(self.ready_timeout)

    def _cluster_nodes(self, node: Node) -> list[list[str]]:
        with self.client(node) as c:
            text = str(command(c, "CLUSTER", "NODES"))
        return [line.split() for line in text.splitlines() if line.strip()]

    def _all_met(self) -> bool:
        for node in self.nodes:
            rows = self._cluster_nodes(node)
            if len(rows) != len(self.nodes) or any("handshake" in row[2] for row in rows):
                return False
        return True

    def _healthy(self) -> bool:
        """Every live node: cluster_state ok, the same view of who serves which slots and
        who replicates whom, and every replica synced."""
        views = set()
        for node in self.nodes:
            if not node.alive():
                continue
            with self.client(node) as c:
                if "cluster_state:ok" not in str(command(c, "CLUSTER", "INFO")):
                    return False
                replication = c.info("replication")
            if replication["role"] == "slave" and (
                replication.get("master_link_status") != "up"
                or replication.get("master_sync_in_progress")
            ):
                return False
            rows = self._cluster_nodes(node)
            views.add(
                repr(sorted((r[1].split("@")[0], r[3], *r[8:]) for r in rows if "fail" not in r[2]))
            )
        return len(views) == 1

    def wait_healthy(self, timeout: float = 30) -> float:
        t0 = time.monotonic()
        wait_for("cluster healthy", self._healthy, timeout)
        return time.monotonic() - t0

    def primary_port_for_slot(self, slot: int) -> int:
        """The port of the primary that a live node's CLUSTER SLOTS names for `slot`."""
        for node in self.nodes:
            if not node.alive():
                continue
            with contextlib.suppress(redis.RedisError, OSError), self.client(node) as c:
                for first, last, primary, *_ in command(c, "CLUSTER", "SLOTS"):
                    if int(first) <= slot <= int(last):
                        return int(primary[1])
        raise LookupError(f"no live node knows slot {slot}")

    def primary_for_key(self, key: str) -> Node:
        return self.node_by_port(self.primary_port_for_slot(key_slot(key.encode())))

    def primary_pid_for_key(self, key: str) -> int:
        return self.primary_for_key(key).pid

    def app_env(self) -> dict[str, str]:
        # Any node will do: redis-py's RedisCluster finds the others from it.
        return super().app_env() | {
            "REDIS_URL": f"redis://{REDIS_API_USER}@{self.nodes[0].address}"
        }

    def describe(self) -> list[str]:
        lines = [f"Redis Cluster of {len(self.nodes)} nodes (bus ports on loopback only):"]
        for node in self.nodes:
            role = self.role(node) if node.alive() else "down"
            lines.append(f"  {node.name} {node.address} {role} (pid {node.pid})")
        return lines


@dataclass
class RedisSentinel(Topology):
    """A primary, `replicas` replicas and `sentinels` sentinels watching them (quorum 2)."""

    mode: ClassVar[str] = "sentinel"
    replicas: int = 1
    sentinels: int = 3
    quorum: int = 2
    master_name: str = MASTER_NAME

    def acl_rules(self) -> dict[str, str]:
        users = (REDIS_REPLICA_USER, REDIS_SENTINEL_USER)
        return super().acl_rules() | {u: REDIS_TOPOLOGY_ACL_RULES[u] for u in users}

    def server_lines(self, node: Node) -> list[str]:
        lines = self.replication_lines()
        if node is not self.nodes[0]:
            lines.append(f"replicaof {HOST} {self.nodes[0].port}")
        return lines

    def sentinel_lines(self, node: Node) -> list[str]:
        name = self.master_name
        return [
            # The sentinels' own password (REDIS_SENTINEL_PASSWORD); they use it with each
            # other too.
            f"requirepass {self.secrets.sentinel_password()}",
            f"sentinel monitor {name} {HOST} {self.nodes[0].port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {SENTINEL_DOWN_AFTER_MS}",
            f"sentinel failover-timeout {name} {SENTINEL_FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {name} 1",
            f"sentinel auth-user {name} {REDIS_SENTINEL_USER}",
            f"sentinel auth-pass {name} {self.secrets.password(REDIS_SENTINEL_USER)}",
        ]

    def _start(self) -> None:
        servers = [
            Node(f"redis{i}", "server", self.dir / f"redis{i}") for i in range(1 + self.replicas)
        ]
        self.nodes = list(servers)
        self.launch_all(servers[:1])  # the replicas' configuration names its port
        self.launch_all(servers[1:])
        wait_for("replicas in sync", self._replicas_online, 20)
        # Sentinels only now: they learn the replicas from the primary's INFO, which they
        # read again only every 10 s.
        sentinels = [
            Node(f"sentinel{i}", "sentinel", self.dir / f"sentinel{i}")
            for i in range(self.sentinels)
        ]
        self.nodes += sentinels
        self.launch_all(sentinels)
        wait_for("sentinels agreeing", self._sentinels_agree, self.ready_timeout)

    def sentinel_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.kind == "sentinel"]

    def _replicas_online(self, master: Node | None = None) -> bool:
        with self.client(master or self.nodes[0]) as c:
            replication = c.info("replication")
        online = [
            value
            for key, value in replication.items()
            if key.startswith("slave") and isinstance(value, dict) and value["state"] == "online"
        ]
        live = sum(1 for node in self.servers() if node.alive())
        return replication["role"] == "master" and len(online) >= live - 1

    def _sentinels_agree(self, port: int | None = None) -> bool:
        """Every live sentinel: the same healthy master (`port`, if given), every other
        sentinel and every replica known."""
        addresses = set()
        for node in self.sentinel_nodes():
            if not node.alive():
                continue
            with self.client(node) as c:
                raw = command(c, "SENTINEL", "MASTER", self.master_name)
            master = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else raw
            if (
                master["flags"] != "master"
                or int(master["num-other-sentinels"]) < self.sentinels - 1
                or int(master["num-slaves"]) < self.replicas
            ):
                return False
            addresses.add(int(master["port"]))
        return len(addresses) == 1 and (port is None or port in addresses)

    def master_port(self) -> int:
        """The master's port, as most of the live sentinels name it."""
        votes: dict[int, int] = {}
        for node in self.sentinel_nodes():
            if not node.alive():
                continue
            with contextlib.suppress(redis.RedisError, OSError), self.client(node) as c:
                address = command(c, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
                if address:
                    votes[int(address[1])] = votes.get(int(address[1]), 0) + 1
        if not votes:
            raise LookupError("no sentinel answered")
        return max(votes, key=lambda port: votes[port])

    def master(self) -> Node:
        return self.node_by_port(self.master_port())

    def master_pid(self) -> int:
        return self.master().pid

    def wait_healthy(self, timeout: float = 30) -> float:
        t0 = time.monotonic()

        def healthy() -> bool:
            master = self.master()
            return (
                master.alive()
                and self._replicas_online(master)
                and self._sentinels_agree(master.port)
            )

        wait_for("sentinel set healthy", healthy, timeout)
        return time.monotonic() - t0

    def before_restart(self, node: Node) -> None:
        """A server rejoins as a replica of the master the sentinels name, unless it still is
        that master: a former master started as it was would be an empty, writable master
        for about 10 s, until a sentinel's next INFO converted it."""
        if node.kind != "server":
            return
        master = self.master_port()
        lines = [
            line
            for line in node.conf.read_text(encoding="utf-8").splitlines()
            if not line.startswith(("replicaof ", "slaveof "))
        ]
        if master != node.port:
            lines.append(f"replicaof {HOST} {master}")
        write_private(node.conf, "\n".join(lines) + "\n")

    def restart_servers(self, timeout: float = 30) -> None:
        """Stop every server cleanly, then start the master first and the replicas only once
        the sentinels see it up again (else they might promote a replica meanwhile)."""
        master = self.master()
        for node in self.servers():
            node.send(signal.SIGTERM)
        for node in self.servers():
            if not node.wait_gone(timeout):
                raise RuntimeError(f"{node.name} did not stop")
        self.restart(master)
        wait_for(
            "sentinels seeing the master again", lambda: self._sentinels_agree(master.port), timeout
        )
        for node in self.servers():
            if node is not master:
                self.restart(node)
        self.wait_healthy(timeout)

    def app_env(self) -> dict[str, str]:
        return super().app_env() | {
            # Only the user and the database count: the sentinels name the master.
            "REDIS_URL": f"redis://{REDIS_API_USER}@{self.master_name}/0",
            "REDIS_SENTINELS": ",".join(node.address for node in self.sentinel_nodes()),
            "REDIS_SENTINEL_MASTER": self.master_name,
            "REDIS_SENTINEL_PASSWORD_FILE": str(self.secrets.sentinel_path),
        }

    def describe(self) -> list[str]:
        lines = [f"Sentinel set: master {self.master_name!r}"]
        for node in self.nodes:
            role = "sentinel" if node.kind == "sentinel" else "down"
            if node.kind == "server" and node.alive():
                role = self.role(node)
            lines.append(f"  {node.name} {node.address} {role} (pid {node.pid})")
        return lines


TOPOLOGIES: dict[str, type[Topology]] = {
    "standalone": RedisStandalone,
    "cluster": RedisCluster,
    "sentinel": RedisSentinel,
}


def attach(directory: Path) -> Topology:
    """The topology that `up` (or `start()`) left running in `directory`, from its state file:
    it can be inspected, have nodes killed and restarted, and be stopped."""
    path = directory / STATE_FILE
    state = json.loads(path.read_text(encoding="utf-8"))
    topology = TOPOLOGIES[state["mode"]](
        dir=directory.resolve(),
        secrets_dir=Path(state["secrets_dir"]),
        maxmemory=state["maxmemory"],
    )
    topology.nodes = [
        Node(n["name"], n["kind"], Path(n["dir"]), n["port"], n["bus_port"], n["pid"])
        for n in state["nodes"]
    ]
    return topology


def down(directory: Path) -> int:
    """Stop the topology in `directory` by the PIDs of its state file (each only if it still
    runs Redis); returns how many processes were running."""
    if not (directory / STATE_FILE).exists():
        return 0
    topology = attach(directory)
    running = sum(1 for node in topology.nodes if node.alive())
    topology.stop()
    return running


def _mode(value: str) -> str:
    if value not in MODES:
        raise argparse.ArgumentTypeError(f"one of {', '.join(MODES)}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Passwords are in DIR/secrets (mode 600); redis-cli: REDISCLI_AUTH=$(cat "
        "DIR/secrets/redis_admin_password) redis-cli --user admin -p PORT",
    )
    parser.add_argument("command", choices=("up", "down", "status", "restart"))
    parser.add_argument("node", nargs="?", help="restart: a node's name, port or pid")
    parser.add_argument("--dir", type=Path, required=True, help="state, data, configs, logs")
    parser.add_argument("--mode", type=_mode, default="cluster", help=", ".join(MODES))
    parser.add_argument("--maxmemory", default=REDIS_MAXMEMORY_DEFAULT, help="per server")
    args = parser.parse_args(argv)
    directory: Path = args.dir
    if args.command == "down":
        log(f"stopped {down(directory)} processes")
        return 0
    if args.command == "up":
        if (directory / STATE_FILE).exists() and any(n.alive() for n in attach(directory).nodes):
            sys.exit(f"a topology already runs in {directory}: `down` it first")
        topology = TOPOLOGIES[args.mode](dir=directory, maxmemory=args.maxmemory).start()
        print("\n".join(topology.describe()))
        print(json.dumps(topology.app_env(), indent=2))
        return 0
    topology = attach(directory)
    if args.command == "restart":
        if args.node is None:
            parser.error("restart needs a node")
        node = topology.node(args.node)
        topology.restart(node)
        log(f"{node.name} restarted (pid {node.pid})")
    print("\n".join(topology.describe()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
