"""`make bench`: throughput and latency of the main endpoints, as ratios to the framework's
own ceiling measured in the same run.

Starts its own redis-server and gunicorn (production settings, 2 workers) on free ports,
creates a bench user whose rate limit cannot interfere, and drives wrk (deploy/bench/
bench.lua) over `GET /healthz` (the ceiling), `POST /predict` and `POST /predict/batch` with
64 rows, at each connection count; then the same through `deploy/cluster.py` (nginx + 3
instances) on free ports. Writes reports/bench.{json,md,png}; `--profile` also samples the
workers with py-spy under `POST /predict` load (reports/profile.*).

Exit status: 0 when the measurement worked, even if a target is MISSED (it is a measurement);
1 when the tool failed (a server did not start, wrk failed, or any request failed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
LUA = Path(__file__).with_name("bench.lua")
CLUSTER = ROOT / "deploy" / "cluster.py"
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
BENCH_USER = "bench-user"
# A per-user override far above anything wrk can send, with a short window so the sliding
# window's sorted set stays as small as a real user's (a day's window would hold millions).
BENCH_RATE = "100000/second"
ADMIN_USER = "bench-admin"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Typical Iris rows (cm), cycled to build the batch body.
ROWS = [
    [5.1, 3.5, 1.4, 0.2],
    [6.7, 3.0, 5.2, 2.3],
    [5.9, 3.0, 4.2, 1.5],
    [4.9, 3.1, 1.5, 0.1],
    [6.3, 2.9, 5.6, 1.8],
    [5.5, 2.4, 3.8, 1.1],
]


class ToolError(Exception):
    """The measurement itself failed (not a missed target)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    path: str
    body: bytes | None
    auth: bool


SCENARIOS = (
    Scenario("ceiling GET /healthz", "GET", "/healthz", None, auth=False),
    Scenario("POST /predict", "POST", "/predict", json.dumps({"data": ROWS[0]}).encode(), True),
    Scenario(
        "POST /predict/batch (64)",
        "POST",
        "/predict/batch",
        json.dumps({"instances": [ROWS[i % len(ROWS)] for i in range(64)]}).encode(),
        True,
    ),
)
CEILING, PREDICT, BATCH = (s.name for s in SCENARIOS)


@dataclass
class Result:
    """One wrk run: where, what, how many connections, and what it measured."""

    target: str  # "direct" or "nginx"
    scenario: str
    connections: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    requests: int
    errors: dict[str, int]
    # Server CPU (user + system) per request, in microseconds, by process kind.
    cpu_us_per_req: dict[str, float] = field(default_factory=dict)


@dataclass
class Check:
    name: str
    measured: float | None
    threshold: float
    unit: str
    higher_is_better: bool

    @property
    def status(self) -> str:
        if self.measured is None:
            return "not measured"
        ok = (
            self.measured >= self.threshold
            if self.higher_is_better
            else self.measured <= self.threshold
        )
        return "PASS" if ok else "MISSED"


# --------------------------------------------------------------------------- processes


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


# --------------------------------------------------------------------------- API set-up


def login(client: httpx.Client, username: str, password: str) -> str:
    response = client.post("/token", data={"username": username, "password": password})
    if response.status_code != 200:
        raise ToolError(f"login as {username} failed: {response.status_code} {response.text}")
    token: str = response.json()["access_token"]
    return token


def bench_token(url: str, admin: tuple[str, str]) -> str:
    """Create the bench user with a rate override that cannot interfere; return its token."""
    password = secrets.token_urlsafe(24)
    with httpx.Client(base_url=url, timeout=30) as client:
        auth = {"Authorization": f"Bearer {login(client, *admin)}"}
        body = {"username": BENCH_USER, "password": password, "scopes": ["predict"]}
        created = client.post("/users", json=body, headers=auth)
        if created.status_code == 409:
            created = client.patch(
                f"/users/{BENCH_USER}", json={"password": password}, headers=auth
            )
        if created.status_code not in (200, 201):
            raise ToolError(f"creating {BENCH_USER}: {created.status_code} {created.text}")
        patched = client.patch(
            f"/users/{BENCH_USER}", json={"rate_limit": BENCH_RATE}, headers=auth
        )
        if patched.status_code != 200:
            raise ToolError(f"rate override: {patched.status_code} {patched.text}")
        token = login(client, BENCH_USER, password)
        probe = client.post(
            "/predict", json={"data": ROWS[0]}, headers={"Authorization": f"Bearer {token}"}
        )
        if probe.status_code != 200:
            raise ToolError(f"probe POST /predict: {probe.status_code} {probe.text}")
        return token


# --------------------------------------------------------------------------- wrk


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise ToolError("wrk not found: apt-get install wrk (or brew install wrk)")
    return found


def run_wrk(
    url: str,
    scenario: Scenario,
    connections: int,
    duration: int,
    threads: int,
    token: str,
    work: Path,
) -> dict[str, Any]:
    """One wrk run; returns the JSON that bench.lua's done() printed."""
    body_file = ""
    if scenario.body is not None:
        path = work / f"body-{scenario.path.strip('/').replace('/', '-')}.json"
        path.write_bytes(scenario.body)
        body_file = str(path)
    env = os.environ | {
        "BENCH_METHOD": scenario.method,
        "BENCH_TOKEN": token if scenario.auth else "",
        "BENCH_BODY_FILE": body_file,
    }
    cmd = [wrk_binary(), f"-t{min(threads, connections)}", f"-c{connections}",
           f"-d{duration}s", "--latency", "--timeout", "5s", "-s", str(LUA),
           url + scenario.path]  # fmt: skip
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            return result
    raise ToolError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def measure(
    target: str,
    deployment: Deployment,
    scenario: Scenario,
    connections: int,
    args: argparse.Namespace,
    token: str,
    work: Path,
) -> Result:
    pids = deployment.pids()
    before = {kind: sum(cpu_seconds(p) for p in group) for kind, group in pids.items()}
    raw = run_wrk(deployment.url, scenario, connections, args.duration, args.threads, token, work)
    after = {kind: sum(cpu_seconds(p) for p in group) for kind, group in pids.items()}
    requests = max(1, int(raw["requests"]))
    lat = raw["latency_us"]
    return Result(
        target=target,
        scenario=scenario.name,
        connections=connections,
        rps=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        p999_ms=lat["p999"] / 1000,
        max_ms=lat["max"] / 1000,
        requests=int(raw["requests"]),
        errors={k: int(v) for k, v in raw["errors"].items()},
        cpu_us_per_req={
            kind: round((after[kind] - before[kind]) * 1e6 / requests, 1) for kind in before
        },
    )


def run_target(
    target: str, deployment: Deployment, args: argparse.Namespace, work: Path
) -> list[Result]:
    token = bench_token(deployment.url, deployment.admin)
    # Warm-up (not recorded): fills Redis connection pools and the CPU caches.
    for scenario in SCENARIOS:
        run_wrk(deployment.url, scenario, max(args.connections), 1, args.threads, token, work)
    results = []
    for connections in args.connections:
        for scenario in SCENARIOS:
            result = measure(target, deployment, scenario, connections, args, token, work)
            print(
                f"  {target:<6} {scenario.name:<26} c={connections:<3} "
                f"{result.rps:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                f"p99 {result.p99_ms:7.2f} ms  errors {sum(result.errors.values())}",
                flush=True,
            )
            results.append(result)
    return results


# --------------------------------------------------------------------------- profile


# (label, path or function pattern, absorbing): a sample is charged to the innermost
# matching frame, except that an absorbing category keeps everything called below it
# (e.g. json.loads inside python-jose is JWT cost, asyncio writes inside redis-py are
# Redis client cost).
def _lib(*names: str) -> re.Pattern[str]:
    """A frame of one of these packages: py-spy prints paths relative to sys.path."""
    return re.compile(r"[(/](?:" + "|".join(names) + ")/")


CATEGORIES: list[tuple[str, re.Pattern[str], bool]] = [
    ("JWT decode (python-jose + security.decode)",
     re.compile(r"[(/](jose|ecdsa|cryptography)/|security\.py"), True),
    ("Redis client (redis-py asyncio)", _lib("redis"), True),
    ("model inference (forest, numpy)", _lib("service/ml", "numpy", "sklearn"), True),
    ("pydantic validation", re.compile(r"[(/](pydantic|pydantic_core)/|fastapi/_compat"), True),
    ("logging", re.compile(r"[(/]logging/|service/core/log"), True),
    ("metrics (prometheus_client)", re.compile(r"[(/]prometheus_client/|metrics\.py"), True),
    ("JSON (json stdlib, fastapi encoders)", re.compile(r"[(/]json/|fastapi/encoders"), True),
    ("rate limiter (fastapi-limiter, pyrate-limiter, ratelimit.py)",
     re.compile(r"[(/](fastapi_limiter|pyrate_limiter)/|ratelimit\.py"), False),
    ("service: deps, routes, middleware", _lib("service"), False),
    ("FastAPI/Starlette routing, DI, responses", _lib("fastapi", "starlette"), False),
    ("uvicorn + httptools (HTTP server)",
     _lib("uvicorn", "httptools", "h11", "uvicorn_worker", "gunicorn"), False),
    ("asyncio / event loop", _lib("asyncio", "uvloop", "anyio"), False),
]  # fmt: skip
OTHER = "other (stdlib, interpreter, gc)"

# Functions whose inclusive share (they and everything they call) is reported.
INCLUSIVE = [
    ("TokenService.decode (JWT)", r"TokenService\.decode \("),
    ("run_gate (Redis round trip incl. client)", r"run_gate \("),
    ("PolicyLimiter.__call__ (whole limiter)", r"PolicyLimiter\.__call__ \("),
    ("predict_user dependency", r"predict_user \("),
    ("solve_dependencies (FastAPI DI)", r"solve_dependencies \("),
    ("sync dependencies in the thread pool", r"run_in_threadpool \(|WorkerThread\.run \("),
    ("request body validation", r"(request_body_to_args|_validate_value_with_model_field) \("),
    ("predict endpoint body", r"predict \(service/api/routes/predict\.py"),
    ("_predictions (forest + dicts)", r"_predictions \("),
    ("Predictor.predict_proba", r"Predictor\.predict_proba \("),
    ("_json (orjson response)", r"_json \("),
    ("uvicorn RequestResponseCycle.send", r"RequestResponseCycle\.send \("),
]


def analyse_folded(path: Path) -> dict[str, Any]:
    """Charge py-spy's collapsed stacks to the categories above."""
    totals: dict[str, int] = defaultdict(int)
    inclusive: dict[str, int] = defaultdict(int)
    self_time: dict[str, int] = defaultdict(int)
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        samples += count
        chosen = OTHER
        for frame in frames:  # root to leaf: the innermost library frame wins ...
            match = next((c for c in CATEGORIES if c[1].search(frame)), None)
            if match is not None:
                chosen = match[0]
                if match[2]:  # ... unless an absorbing one was entered on the way
                    break
        totals[chosen] += count
        seen = set()
        for frame in frames:
            for label, pattern in INCLUSIVE:
                if label not in seen and re.match(r"(?:[\w<>.]+\.)?" + pattern, frame):
                    seen.add(label)
                    inclusive[label] += count
        self_time[frames[-1]] += count
    share = {k: v / samples for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    return {
        "samples": samples,
        "categories": share,
        "inclusive": {k: inclusive[k] / samples for k, _ in INCLUSIVE if k in inclusive},
        "top_self": [
            (frame, n / samples)
            for frame, n in sorted(self_time.items(), key=lambda kv: -kv[1])[:25]
        ],
    }


def profile(
    deployment: Deployment, args: argparse.Namespace, work: Path, out: Path
) -> dict[str, Any]:
    """py-spy on both workers while wrk drives POST /predict at the highest connection count:
    one worker recorded as a flame graph (SVG), the other as collapsed stacks to analyse."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    workers = deployment.workers()
    if len(workers) < 2 or not Path(py_spy).exists():
        raise ToolError("profiling needs py-spy and two workers")
    token = bench_token(deployment.url, deployment.admin)
    seconds = args.duration
    folded = out / "profile.folded.txt"
    recorders = [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--rate",
                "250",
                "--nonblocking",
                "--format",
                fmt,
                "-o",
                str(dest),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for pid, fmt, dest in (
            (workers[0], "flamegraph", out / "profile.svg"),
            (workers[1], "raw", folded),
        )
    ]
    time.sleep(1.0)  # py-spy attaches
    result = measure("direct", deployment, SCENARIOS[1], max(args.connections), args, token, work)
    for recorder in recorders:
        _, err = recorder.communicate(timeout=seconds + 60)
        if recorder.returncode != 0:
            raise ToolError(f"py-spy failed: {err.decode(errors='replace')}")
    analysis = analyse_folded(folded)
    analysis["under_load"] = asdict(result)
    worker_us = result.cpu_us_per_req.get("workers", 0.0)
    analysis["worker_cpu_us_per_request"] = worker_us
    (out / "profile.json").write_text(json.dumps(analysis, indent=2) + "\n")
    lines = [
        f"# Profile of POST /predict at {result.connections} connections (py-spy, one worker)",
        "",
        f"{result.rps:,.0f} req/s under py-spy (sampling slows it), p99 {result.p99_ms:.1f} ms; "
        f"worker CPU {worker_us:.0f} µs per request (both workers), "
        f"redis-server {result.cpu_us_per_req.get('redis', 0):.0f} µs; "
        f"{analysis['samples']} samples.",
        "",
        "| where the worker's CPU goes (self, by library) | share | ≈ µs/request |",
        "|---|---:|---:|",
    ]
    for label, share in analysis["categories"].items():
        lines.append(f"| {label} | {share:.1%} | {share * worker_us:.0f} |")
    lines += [
        "",
        "| inclusive (function and all it calls) | share | ≈ µs/request |",
        "|---|---:|---:|",
    ]
    for label, share in analysis["inclusive"].items():
        lines.append(f"| {label} | {share:.1%} | {share * worker_us:.0f} |")
    lines += ["", "| top self frames | share |", "|---|---:|"]
    for frame, share in analysis["top_self"]:
        lines.append(f"| `{frame}` | {share:.1%} |")
    (out / "profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return analysis


# --------------------------------------------------------------------------- report


def find(results: list[Result], target: str, scenario: str, connections: int) -> Result | None:
    for result in results:
        if (result.target, result.scenario, result.connections) == (
            target,
            scenario,
            connections,
        ):
            return result
    return None


def checks(results: list[Result]) -> list[Check]:
    """The issue's targets, each from numbers of this run."""

    def value(target: str, scenario: str, conns: int, attr: str) -> float | None:
        found = find(results, target, scenario, conns)
        return None if found is None else float(getattr(found, attr))

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    out = [
        Check("POST /predict @64: req/s", value("direct", PREDICT, 64, "rps"), 3000, "req/s", True),
        Check(
            "POST /predict @64: share of ceiling",
            ratio(value("direct", PREDICT, 64, "rps"), value("direct", CEILING, 64, "rps")),
            0.25, "ratio", True,
        ),
        Check("POST /predict @64: p99", value("direct", PREDICT, 64, "p99_ms"), 50, "ms", False),
        Check("POST /predict @16: p99", value("direct", PREDICT, 16, "p99_ms"), 15, "ms", False),
    ]  # fmt: skip
    for conns in (16, 64):
        for pct in ("p50", "p99"):
            out.append(
                Check(
                    f"batch-64 {pct} / predict {pct} @{conns}",
                    ratio(
                        value("direct", BATCH, conns, f"{pct}_ms"),
                        value("direct", PREDICT, conns, f"{pct}_ms"),
                    ),
                    2.0, "x", False,
                )
            )  # fmt: skip
    for conns in (64, 16):
        out.append(
            Check(
                f"POST /predict @{conns}: nginx / direct req/s",
                ratio(
                    value("nginx", PREDICT, conns, "rps"), value("direct", PREDICT, conns, "rps")
                ),
                0.70, "ratio", True,
            )
        )  # fmt: skip
    return out


def fmt_check(check: Check) -> tuple[str, str, str]:
    def show(value: float) -> str:
        if check.unit == "ratio":
            return f"{value:.0%}"
        if check.unit == "x":
            return f"{value:.2f}x"
        if check.unit == "req/s":
            return f"{value:,.0f} req/s"
        return f"{value:.1f} {check.unit}"

    op = ">=" if check.higher_is_better else "<="
    measured = "-" if check.measured is None else show(check.measured)
    return measured, f"{op} {show(check.threshold)}", check.status


def table_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        ceiling = find(results, r.target, CEILING, r.connections)
        direct = find(results, "direct", r.scenario, r.connections)
        rows.append(
            [
                r.scenario,
                r.target,
                str(r.connections),
                f"{r.rps:,.0f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                f"{r.rps / ceiling.rps:.0%}" if ceiling else "-",
                f"{r.rps / direct.rps:.0%}" if direct and r.target != "direct" else "-",
                f"{r.cpu_us_per_req.get('workers', 0):.0f}",
            ]
        )
    return rows


HEADERS = ["scenario", "via", "conns", "req/s", "p50 ms", "p99 ms", "of ceiling",
           "of direct", "worker CPU µs/req"]  # fmt: skip


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def chart(results: list[Result], path: Path, title: str) -> None:
    """Grouped bars of req/s and p99 per scenario and connection count, direct vs nginx."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r.scenario, r.connections) for r in results))
    targets = list(dict.fromkeys(r.target for r in results))
    labels = [
        s.replace(" (64)", "\n(64 rows)").replace("ceiling ", "ceiling\n") + f"\nc={c}"
        for s, c in keys
    ]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    width = 0.8 / max(1, len(targets))
    colours = {"direct": "#4C72B0", "nginx": "#DD8452"}
    for metric, ax, unit in (("rps", axes[0], "req/s"), ("p99_ms", axes[1], "p99 latency (ms)")):
        for index, target in enumerate(targets):
            values = []
            for scenario, conns in keys:
                found = find(results, target, scenario, conns)
                values.append(float(getattr(found, metric)) if found else 0.0)
            xs = [i + (index - (len(targets) - 1) / 2) * width for i in range(len(keys))]
            bars = ax.bar(xs, values, width, label=target, color=colours.get(target))
            ax.bar_label(bars, fmt="{:,.0f}" if metric == "rps" else "{:.1f}", fontsize=7)
        ax.set_xticks(range(len(keys)), labels, fontsize=7)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    axes[0].axhline(3000, color="green", linestyle="--", linewidth=0.8)
    axes[0].set_title("throughput (dashed: 3,000 req/s target for POST /predict @64)")
    axes[1].set_title("p99 latency (targets: 15 ms @16, 50 ms @64 for POST /predict)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            timeout=10, check=False,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def report(results: list[Result], args: argparse.Namespace, meta: dict[str, Any]) -> bool:
    """Print and write the table, targets and chart; return whether any request failed."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(results)
    target_rows = [[c.name, *fmt_check(c)] for c in checks(results)]
    print()
    print(text_table(HEADERS, rows))
    print()
    print(text_table(["target", "measured", "wanted", "status"], target_rows))
    missed = [r[0] for r in target_rows if r[3] == "MISSED"]
    if missed:
        print(f"\nMISSED {len(missed)} target(s): " + "; ".join(missed))
    failed = [r for r in results if sum(r.errors.values())]
    for r in failed:
        print(f"\nFAILED REQUESTS in {r.target} {r.scenario} c={r.connections}: {r.errors}")

    stamp = meta["finished_at"]
    title = (
        f"make bench {stamp} ({meta['cpus']} CPUs, load {meta['loadavg_before']}, "
        f"{args.duration}s per run, commit {meta['commit']})"
    )
    data = {
        "meta": meta,
        "results": [asdict(r) for r in results],
        "checks": [asdict(c) | {"status": c.status} for c in checks(results)],
    }
    (out / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    md = [
        f"<!-- generated by `make bench` (deploy/bench/bench.py) on {stamp} -->",
        f"`make bench`, {stamp}: {meta['cpus']} CPUs shared with wrk, load average "
        f"{meta['loadavg_before']} before the run, {args.duration} s per wrk run "
        f"({args.threads} threads), direct: gunicorn with {args.workers} uvicorn workers; "
        f"nginx: `make cluster`'s 3 instances, workers sized to the cores; "
        f"commit {meta['commit']}.",
        "",
        md_table(HEADERS, rows),
        "",
        md_table(["target", "measured", "wanted", "status"], target_rows),
        "",
        "![make bench](bench.png)",
    ]
    (out / "bench.md").write_text("\n".join(md) + "\n")
    chart(results, out / "bench.png", title)
    print(f"\nwrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return bool(failed)


# --------------------------------------------------------------------------- main


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per instance")
    parser.add_argument("--no-cluster", action="store_true", help="skip the nginx runs")
    parser.add_argument("--profile", action="store_true", help="py-spy the direct workers")
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: 1 s runs, no cluster (for tests)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "var" / "model")
    parser.add_argument("--app", default="service.main:create_app()", help="gunicorn app")
    parser.add_argument("--pythonpath", action="append", default=[], help="A/B runs only")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.no_cluster = 1, True
    if args.duration < 1 or args.threads < 1 or min(args.connections) < 1:
        parser.error("--duration, --threads and --connections must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if not (args.model_dir / "model.joblib").exists():
        print(f"no model in {args.model_dir}: run `make model` first", file=sys.stderr)
        return 1
    meta: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_before": f"{os.getloadavg()[0]:.2f}",
        "python": platform.python_version(),
        "commit": git_commit(),
        "duration_s": args.duration,
        "connections": args.connections,
        "wrk_threads": args.threads,
        "workers_per_instance": args.workers,
        "bench_rate_override": BENCH_RATE,
    }
    results: list[Result] = []
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        env = server_env(args)
        print(f"direct: redis-server + gunicorn ({args.workers} workers) on free ports")
        with direct_deployment(work / "direct", env) as deployment:
            results += run_target("direct", deployment, args, work)
            if args.profile:
                print("\nprofiling POST /predict with py-spy ...")
                profile(deployment, args, work, args.out)
        if not args.no_cluster:
            print(
                "\nnginx: deploy/cluster.py up (redis, 3 instances sized to the cores, nginx)"
                " on free ports"
            )
            with cluster_deployment(work / "cluster", env, timeout=120) as deployment:
                results += run_target("nginx", deployment, args, work)
    except ToolError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    failed = report(results, args, meta)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
