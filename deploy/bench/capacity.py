"""Redis capacity: keys and bytes per active user and per live session, and the rate-limit
state of one user before (sliding-window log) and after (GCRA) the limiter change.

Starts a private redis-server on a free port (or uses `--redis-url`, an empty Redis you own)
and the app in-process, over httpx's ASGI transport: what is measured is what the service
leaves in Redis, which does not depend on the HTTP server in front, and one process keeps a
run short and quiet on a shared machine. Then:

1. Active users, through the public HTTP API only: `--users` users are created (admin API),
   each logs in once (one live session) and makes `--predictions` predictions (its per-user
   rate counter); then each logs in again (one more live session). Every `sma:*` key is
   classified by kind (service/infra/keys.py) and sized with `MEMORY USAGE ... SAMPLES 0`;
   `INFO memory` used_memory is read at the same points. Per-user numbers are the
   differences divided by the number of users.
2. Rate-limit state, with redis-py and no app: the gate script of before the change (the
   sliding-window log, `git show <--before-rev>:service/infra/lua/gate.lua`, or
   `--before-gate FILE`) and today's `gate.lua` (GCRA), each run for users who make `count`
   requests at `rate` (`--rates RATE:COUNT,...`), all admitted; then the counter's bytes.

    python deploy/bench/capacity.py [--users 1000] [--json reports/capacity.json]

Prints markdown tables on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parents[2]
GATE_PATH = "service/infra/lua/gate.lua"
# The last commit whose gate counted with a sliding-window log (the GCRA change is aaacf7e).
BEFORE_REV = "3c3046a"
DEFAULT_RATES = "60/minute:60,100000/hour:1000,100000/hour:10000,100000/hour:100000"
# A browser's User-Agent: a session records it (up to 256 characters), so its length counts.
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
PREDICT_BODY = {"data": [5.1, 3.5, 1.4, 0.2]}
# Argon2 at 10 MiB and one pass: a few times cheaper than the default (19 MiB, two passes),
# and its encoded hash has the same length, so the user hash has its production size.
# The per-address policies' rate in part 1 (every login comes from 127.0.0.1): it bounds
# --users (two logins each).
SHARED_ADDRESS_RATE = "100000/day"
MAX_USERS = 40_000
ARGON2 = {"argon2_time_cost": 1, "argon2_memory_cost_kib": 10000, "argon2_parallelism": 1}


# --- What a key is -------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    pattern: re.Pattern[str]
    lasting: bool  # part of an active user's state, rather than a counter that expires in seconds


def _kinds() -> tuple[Kind, ...]:
    """Each key kind, as a pattern made from service/infra/keys.py's own functions."""
    from service.infra import keys
    from service.rules.policies import LOGIN, PREDICT

    def pattern(key: str) -> re.Pattern[str]:
        text = re.escape(key).replace("<name>", "[^}]+").replace("<sid>", "[^:]+")
        return re.compile(text.replace("<policy>", "[^:]+"))

    user, client = keys.user_tag("<name>"), keys.client_tag("<name>")
    return (
        Kind("user hash", pattern(keys.user_key("<name>")), True),
        Kind("users set (one shared key)", pattern(keys.USERS_SET), True),
        Kind("session hash", pattern(keys.session_key("<name>", "<sid>")), True),
        Kind("session index", pattern(keys.sessions_key("<name>")), True),
        Kind(PREDICT_KIND, pattern(keys.rate_key(PREDICT.name, user)), True),
        Kind("rate counters: other per-user", pattern(keys.rate_key("<policy>", user)), False),
        Kind(
            "rate counter: login (per address+username)",
            pattern(keys.rate_key(LOGIN.name, client)),
            False,
        ),
        Kind("rate counters: other per-address", pattern(keys.rate_key("<policy>", client)), False),
    )


OTHER = "other"
PREDICT_KIND = "rate counter: predict (per user)"


def classify(kinds: Iterable[Kind], key: str) -> str:
    for kind in kinds:
        if kind.pattern.fullmatch(key):
            return kind.name
    return OTHER


# --- Measuring -------------------------------------------------------------------------------


@dataclass
class Snapshot:
    used_memory: int
    keys: dict[str, int] = field(default_factory=dict)  # kind -> keys
    bytes: dict[str, int] = field(default_factory=dict)  # kind -> MEMORY USAGE summed


class Meter:
    """Reads a Redis's memory with a connection that only sends small commands; the traffic
    and the key scans go through side connections, closed before each reading (a client's
    query and reply buffers are used_memory too)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url, decode_responses=True)

    def used_memory(self) -> int:
        """INFO used_memory less the clients' buffers (connections are no user's memory)."""
        info = self.client.info("memory")
        clients = int(info["mem_clients_normal"]) + int(info["mem_clients_slaves"])
        return int(info["used_memory"]) - clients

    def settled(self) -> int:
        """used_memory once it holds still: Redis shrinks and rehashes its key tables in the
        background after many keys were deleted (`hz` times a second)."""
        last = self.used_memory()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.used_memory()
            if now == last:
                break
            last = now
        return last

    def _clients(self) -> int:
        return int(self.client.info("clients")["connected_clients"])

    @contextmanager
    def side_connection(self) -> Iterator[redis.Redis]:
        """A client of its own, gone from the server (not only closed here) on exit."""
        clients = self._clients()
        side = redis.Redis.from_url(self.url, decode_responses=True, single_connection_client=True)
        try:
            yield side
        finally:
            side.close()
            deadline = time.monotonic() + 5
            while self._clients() > clients and time.monotonic() < deadline:
                time.sleep(0.01)

    def snapshot(self, kinds: tuple[Kind, ...]) -> Snapshot:
        with self.side_connection() as side:
            names = sorted(side.scan_iter("sma:*", count=1000))
            pipe = side.pipeline(transaction=False)
            for name in names:
                pipe.memory_usage(name, samples=0)
            sizes = pipe.execute() if names else []
        shot = Snapshot(used_memory=self.settled())
        for name, size in zip(names, sizes, strict=True):
            kind = classify(kinds, name)
            shot.keys[kind] = shot.keys.get(kind, 0) + 1
            shot.bytes[kind] = shot.bytes.get(kind, 0) + int(size or 0)  # None: expired
        return shot


@dataclass
class PerUnit:
    """What one unit (an active user, one more session) adds, on average, by kind."""

    keys: dict[str, float]
    bytes: dict[str, float]
    used_memory: float


def per_unit(before: Snapshot, after: Snapshot, units: int) -> PerUnit:
    kinds = sorted(set(before.keys) | set(after.keys))
    return PerUnit(
        keys={k: (after.keys.get(k, 0) - before.keys.get(k, 0)) / units for k in kinds},
        bytes={k: (after.bytes.get(k, 0) - before.bytes.get(k, 0)) / units for k in kinds},
        used_memory=(after.used_memory - before.used_memory) / units,
    )


# --- 1. Active users and sessions, through the API ------------------------------------------


@dataclass
class Population:
    users: int
    predictions: int
    predict_rate: str
    active_user: PerUnit
    extra_session: PerUnit
    seconds: float


def _settings(redis_url: str, model_dir: Path, admin: tuple[str, str], predict_rate: str) -> Any:
    from service.infra.config import Settings

    values: dict[str, Any] = {
        "redis_mode": "standalone",
        "redis_url": redis_url,
        "redis_password": None,
        "redis_password_file": None,
        "jwt_secret": secrets.token_urlsafe(48),
        "admin_username": admin[0],
        "admin_password": admin[1],
        "admin_password_file": None,
        "model_dir": model_dir,
        "log_level": "warning",
        "redis_socket_timeout": 5.0,
        **ARGON2,
        # No counter may expire before its snapshot: a GCRA counter lives window/N per
        # request made. Its size does not depend on the rate (part 2 shows it).
        "rate_limit_predict": predict_rate,
        "rate_limit_login": "5/hour",
        "rate_limit_login_user": "20/hour",
        # One client address (127.0.0.1) logs every user in, twice: at one request per
        # 864 ms its counters stay alive from the rehearsal to the end (one key in all, no
        # user's), where at 100000/hour they would come and go between snapshots.
        "rate_limit_login_ip": SHARED_ADDRESS_RATE,
        "rate_limit_public": SHARED_ADDRESS_RATE,
    }
    return Settings(_env_file=None, **values)


async def _in_batches(calls: Iterable[Callable[[], Awaitable[None]]], size: int) -> None:
    batch: list[Callable[[], Awaitable[None]]] = []
    for call in [*calls, None]:
        if call is not None:
            batch.append(call)
        if batch and (call is None or len(batch) == size):
            await asyncio.gather(*(item() for item in batch))
            batch = []


def _expect(answer: httpx.Response, status: int) -> httpx.Response:
    if answer.status_code != status:
        raise RuntimeError(f"{answer.request.url.path}: {answer.status_code} {answer.text[:200]}")
    return answer


async def measure_population(
    meter: Meter,
    model_dir: Path,
    *,
    users: int,
    predictions: int,
    predict_rate: str,
    concurrency: int,
) -> Population:
    from service.main import create_app

    kinds = _kinds()
    admin = ("capacity-admin", secrets.token_urlsafe(18))
    password = secrets.token_urlsafe(18)
    names = [f"user{i:06d}" for i in range(1, users + 1)]
    tokens: dict[str, str] = {}
    app = create_app(_settings(meter.url, model_dir, admin, predict_rate))
    started = time.perf_counter()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        headers = {"User-Agent": USER_AGENT}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://capacity", headers=headers, timeout=60
        ) as http:

            async def login(name: str, secret: str) -> str:
                form = {"grant_type": "password", "username": name, "password": secret}
                answer = _expect(await http.post("/token", data=form), 200)
                token: str = answer.json()["access_token"]
                return token

            admin_auth = {"Authorization": f"Bearer {await login(*admin)}"}

            async def create(name: str) -> None:
                body = {"username": name, "password": password, "scopes": ["predict"]}
                _expect(await http.post("/users", json=body, headers=admin_auth), 201)

            async def start_session(name: str) -> None:
                tokens[name] = await login(name, password)

            async def predict(name: str) -> None:
                auth = {"Authorization": f"Bearer {tokens[name]}"}
                for _ in range(predictions):
                    _expect(await http.post("/predict", json=PREDICT_BODY, headers=auth), 200)

            def each(
                step: Callable[[str], Awaitable[None]], among: list[str] = names
            ) -> list[Callable[[], Awaitable[None]]]:
                return [partial(step, name) for name in among]

            # A rehearsal by users deleted afterwards: Redis's one-time allocations (a first
            # script run, ...) and the app's connections stay out of the differences.
            rehearsal = [f"warmup{i:04d}" for i in range(concurrency)]
            for step in (create, start_session, predict, start_session):
                await _in_batches(each(step, rehearsal), concurrency)
            for name in rehearsal:
                _expect(await http.delete(f"/users/{name}", headers=admin_auth), 204)
            base = meter.snapshot(kinds)
            _progress(f"creating {users} users")
            await _in_batches(each(create), concurrency)
            _progress(f"{users} logins (first session each)")
            await _in_batches(each(start_session), concurrency)
            _progress(f"{users} x {predictions} predictions")
            await _in_batches(each(predict), concurrency)
            active = meter.snapshot(kinds)
            _progress(f"{users} logins (a second session each)")
            await _in_batches(each(start_session), concurrency)
            sessions = meter.snapshot(kinds)
    return Population(
        users=users,
        predictions=predictions,
        predict_rate=predict_rate,
        active_user=per_unit(base, active, users),
        extra_session=per_unit(active, sessions, users),
        seconds=round(time.perf_counter() - started, 1),
    )


# --- 2. Rate-limit state before and after, with the gate scripts directly ------------------


@dataclass
class CounterState:
    admitted: int  # requests admitted, per user (all of them, or the run is void)
    encoding: str  # OBJECT ENCODING of the counter
    entries: int  # sorted-set members (the log), or 1 (a GCRA string)
    bytes: float  # MEMORY USAGE SAMPLES 0 of one counter, averaged over the users
    used_memory: float  # INFO used_memory delta per user


@dataclass
class LimiterPoint:
    rate: str
    requests: int
    users: int
    before: CounterState
    after: CounterState


def before_gate(rev: str, path: Path | None) -> str:
    """The sliding-window log gate script: a file, or the repository's at `rev`."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            sys.exit(f"--before-gate {path}: {error.strerror or error}")
    else:
        hint = (
            f"the old gate script is `git show {rev}:{GATE_PATH}` in a full clone of the "
            "repository; elsewhere (a tarball, a shallow clone) pass it as --before-gate FILE"
        )
        if shutil.which("git") is None:
            sys.exit(f"git not found: {hint}")
        done = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:{GATE_PATH}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            reason = done.stderr.strip().splitlines()[-1:] or ["git failed"]
            sys.exit(f"cannot read {GATE_PATH} at {rev} ({reason[0]}): {hint}")
        text = done.stdout
    if "ZADD" not in text:
        sys.exit("the 'before' gate script is no sliding-window log (it never ZADDs)")
    return text


def after_gate() -> str:
    return resources.files("service.infra").joinpath("lua", "gate.lua").read_text("utf-8")


def _run_counter(
    meter: Meter,
    script: str,
    *,
    sliding_log: bool,
    keys: list[str],
    limit: int,
    window_ms: int,
    requests: int,
) -> CounterState:
    """Each key's user makes `requests` requests through the script (token check off, as for
    an address-keyed policy: the counting part is the same)."""
    meter.client.script_load(script)  # the script cache is no user's memory
    before = meter.settled()
    admitted = dict.fromkeys(keys, 0)
    chunk = 1000
    with meter.side_connection() as side:
        run = side.register_script(script)
        for key in keys:
            for start in range(0, requests, chunk):
                pipe = side.pipeline(transaction=False)
                for _ in range(min(chunk, requests - start)):
                    # Each version's gate.py arguments: the log needs a unique member.
                    args: list[str | int]
                    if sliding_log:
                        args = ["0", "1", "", limit, window_ms, os.urandom(8).hex(), "0"]
                    else:
                        args = ["0", "1", "", limit, window_ms, "0"]
                    run(keys=[key], args=args, client=pipe)
                for reply in pipe.execute():
                    admitted[key] += int(reply[0]) == 0
    after = meter.settled()
    client = meter.client
    sizes = [int(client.memory_usage(key, samples=0) or 0) for key in keys]
    entries = int(client.zcard(keys[0])) if sliding_log else int(client.exists(keys[0]))
    state = CounterState(
        admitted=min(admitted.values()),
        encoding=str(client.object("encoding", keys[0])),
        entries=entries,
        bytes=sum(sizes) / len(keys),
        used_memory=(after - before) / len(keys),
    )
    client.delete(*keys)
    return state


def measure_limiter(
    meter: Meter, before_script: str, points: list[tuple[str, int]], budget: int
) -> list[LimiterPoint]:
    from service.infra.keys import rate_key, user_tag
    from service.rules.policies import PREDICT
    from service.rules.rates import Rate

    # A rehearsal: Redis's one-time allocations (a script's first run) stay out of the numbers.
    rehearsal: dict[str, Any] = {"keys": ["sma:warmup"], "limit": 10, "window_ms": 60_000,
                                 "requests": 10}  # fmt: skip
    _run_counter(meter, before_script, sliding_log=True, **rehearsal)
    _run_counter(meter, after_gate(), sliding_log=False, **rehearsal)
    results = []
    for text, requests in points:
        rate = Rate.parse(text)
        users = max(1, min(100, budget // requests))
        # Today's key names for both, so that only the algorithm differs.
        keys = [rate_key(PREDICT.name, user_tag(f"limit{i:06d}")) for i in range(users)]
        common: dict[str, Any] = {
            "keys": keys, "limit": rate.limit, "window_ms": rate.window * 1000,
            "requests": requests,
        }  # fmt: skip
        _progress(f"{text}: {users} user(s) x {requests} requests, sliding log then GCRA")
        log = _run_counter(meter, before_script, sliding_log=True, **common)
        gcra = _run_counter(meter, after_gate(), sliding_log=False, **common)
        for state in (log, gcra):
            if state.admitted != requests:
                sys.exit(f"{text}: only {state.admitted} of {requests} admitted; a slow run?")
        results.append(LimiterPoint(text, requests, users, log, gcra))
    return results


# --- Report ----------------------------------------------------------------------------------


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def population_table(population: Population, kinds: tuple[Kind, ...]) -> str:
    active, extra = population.active_user, population.extra_session
    names = [k.name for k in kinds] + [OTHER]
    shown = [
        name
        for name in names
        if any(d.get(name, 0) for d in (active.keys, active.bytes, extra.keys, extra.bytes))
    ]
    lasting = {k.name for k in kinds if k.lasting}
    rows = [
        "| key kind | keys / active user | bytes / active user | "
        "keys / extra live session | bytes / extra live session |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in shown:
        label = name if name in lasting else f"{name} (transient)"
        rows.append(
            f"| {label} | {_n(active.keys.get(name, 0), 2)} | {_n(active.bytes.get(name, 0))} | "
            f"{_n(extra.keys.get(name, 0), 2)} | {_n(extra.bytes.get(name, 0))} |"
        )

    def total(unit: PerUnit, which: set[str]) -> tuple[float, float]:
        return (
            sum(v for k, v in unit.keys.items() if k in which),
            sum(v for k, v in unit.bytes.items() if k in which),
        )

    for label, which in (("lasting keys", lasting), ("all keys", set(names))):
        a_keys, a_bytes = total(active, which)
        e_keys, e_bytes = total(extra, which)
        rows.append(
            f"| **total, {label}** (MEMORY USAGE) | {_n(a_keys, 2)} | **{_n(a_bytes)}** | "
            f"{_n(e_keys, 2)} | **{_n(e_bytes)}** |"
        )
    rows.append(
        f"| **INFO used_memory delta** | | **{_n(active.used_memory)}** | "
        f"| **{_n(extra.used_memory)}** |"
    )
    return "\n".join(rows)


def limiter_table(points: list[LimiterPoint]) -> str:
    rows = [
        "| rate | requests made | users averaged | before: entries | before: encoding | "
        "before: bytes / counter | before: used_memory / user | after: encoding | "
        "after: bytes / counter | after: used_memory / user |",
        "|---|---:|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    for p in points:
        b, a = p.before, p.after
        rows.append(
            f"| {p.rate} | {_n(p.requests)} | {p.users} | {_n(b.entries)} | {b.encoding} | "
            f"{_n(b.bytes)} | {_n(b.used_memory)} | {a.encoding} | {_n(a.bytes)} | "
            f"{_n(a.used_memory)} |"
        )
    return "\n".join(rows)


def per_user_table(population: Population, points: list[LimiterPoint]) -> str:
    """An active user's lasting state with each counter: today's user and session keys plus
    the limiter state of the old or the new algorithm."""
    kinds = _kinds()
    lasting = {k.name for k in kinds if k.lasting}
    predict = PREDICT_KIND
    active = population.active_user
    others = sum(v for k, v in active.bytes.items() if k in lasting and k != predict)
    rows = [
        "| rate | requests made | limiter state: log | limiter state: GCRA | "
        "active user with the log | active user with GCRA | GCRA / log |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        before, after = others + p.before.bytes, others + p.after.bytes  # log, GCRA
        rows.append(
            f"| {p.rate} | {_n(p.requests)} | {_n(p.before.bytes)} | {_n(p.after.bytes)} | "
            f"{_n(before)} | {_n(after)} | {after / before:.2%} |"
        )
    return "\n".join(rows)


def report(population: Population, points: list[LimiterPoint], redis_version: str) -> str:
    kinds = _kinds()
    return "\n".join(
        [
            f"### Redis state per active user and per live session (Redis {redis_version})",
            "",
            f"{population.users:,} users, each created, logged in once and making "
            f"{population.predictions} predictions (PREDICT at {population.predict_rate}); then "
            "each logged in once more. Bytes are MEMORY USAGE (SAMPLES 0) summed by key kind, "
            "and the server's INFO used_memory; both divided by the number of users.",
            "",
            population_table(population, kinds),
            "",
            "Lasting: what a user with a live session holds (the predict counter while the user "
            "is active: a GCRA counter expires window/N after each counted request, so at "
            "60/minute one second per request made). Transient: a login counter is gone "
            "window/N after the login (12 s at the default 5/minute; the run uses 5/hour so "
            "that none expires before it is counted).",
            "",
            "### Rate-limit state per user: sliding-window log (before) vs GCRA (after)",
            "",
            "One counter per user, after that many requests, all admitted; the same key name "
            "for both, so only the algorithm differs. bytes / counter is MEMORY USAGE of each "
            "counter; used_memory / user is the server's whole change divided by the users "
            "averaged, so with one or two users it also carries a few hundred bytes to a few KB "
            "of server-side noise.",
            "",
            limiter_table(points),
            "",
            "### Lasting bytes per active user, with each limiter",
            "",
            "Today's lasting user and session keys measured above, with the predict counter "
            "replaced by each algorithm's after that many requests (MEMORY USAGE). The release "
            "with the log kept tokens differently (no session hash), so only the counter's "
            "part is the limiter change.",
            "",
            per_user_table(population, points),
            "",
        ]
    )


# --- Running ---------------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"capacity: {message}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own on a free loopback port, no persistence; stopped by PID."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found")
    port = _free_port()
    data = tempfile.mkdtemp(prefix="capacity-")
    # No slow log: its entries (argument lists of slow calls, up to 128) are no user's state
    # and would show in the single-user used_memory deltas of part 2.
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", data,
            "--appendonly", "no", "--slowlog-log-slower-than", "-1"]  # fmt: skip
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(data, ignore_errors=True)


def _connect(url: str) -> Meter:
    meter = Meter(url)
    for _ in range(100):
        try:
            meter.client.ping()
            return meter
        except redis.ConnectionError:
            time.sleep(0.05)
    sys.exit(f"no Redis answers at {url}")


def parse_rates(text: str) -> list[tuple[str, int]]:
    """`RATE:REQUESTS,...` (--rates): each rate valid and no more requests than it admits."""
    from service.rules.rates import Rate

    points = []
    for item in text.split(","):
        rate, _, count = item.strip().rpartition(":")
        try:
            limit = Rate.parse(rate).limit
            requests = int(count)
        except ValueError as error:
            raise ValueError(f"--rates {item.strip()!r}: {error}") from None
        if not 1 <= requests <= limit:
            raise ValueError(f"--rates {item.strip()!r}: from 1 to {limit} requests")
        points.append((rate, requests))
    return points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--predictions", type=int, default=5, help="per user")
    parser.add_argument(
        "--predict-rate", default="1000/day",
        help="PREDICT during part 1: slow enough that no counter expires before it is measured",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rates", default=DEFAULT_RATES, help="RATE:REQUESTS,... for part 2")
    parser.add_argument(
        "--budget", type=int, default=20_000,
        help="requests per rate in part 2: the users averaged (at most 100) are budget/requests",
    )  # fmt: skip
    parser.add_argument("--before-rev", default=BEFORE_REV)
    parser.add_argument("--before-gate", type=Path, help="the old gate.lua as a file instead")
    parser.add_argument("--model-dir", type=Path, default=Path("var/model"))
    parser.add_argument("--redis-url", help="an empty Redis of yours instead of a private one")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if not 1 <= args.users <= MAX_USERS:
        sys.exit(f"--users from 1 to {MAX_USERS} (every login comes from one address)")
    if not (args.model_dir / "model.joblib").is_file():
        sys.exit(f"no model in {args.model_dir}: make model (or pass --model-dir)")
    try:
        points = parse_rates(args.rates)
    except ValueError as error:
        sys.exit(str(error))
    old_script = before_gate(args.before_rev, args.before_gate)
    with private_redis() if args.redis_url is None else _given(args.redis_url) as url:
        meter = _connect(url)
        if meter.client.dbsize() != 0:
            sys.exit(f"{url} is not empty: the counts would be off")
        population = asyncio.run(
            measure_population(
                meter, args.model_dir.resolve(), users=args.users,
                predictions=args.predictions, predict_rate=args.predict_rate,
                concurrency=args.concurrency,
            )
        )  # fmt: skip
        limiter = measure_limiter(meter, old_script, points, args.budget)
        version = str(meter.client.info("server")["redis_version"])
        meter.client.close()
    print(report(population, limiter, version))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "redis_version": version,
            "population": asdict(population),
            "limiter": [asdict(point) for point in limiter],
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    sys.exit(main())
