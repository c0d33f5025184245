"""`make bench`: throughput and latency of the service's main endpoints, as ratios to the
framework's own ceiling (and, optionally, to a peer model server) measured in the same run.

Starts everything it measures on 127.0.0.1, on free ports (processes.py): a Redis topology
of `--redis-mode` (standalone by default; `cluster`: 3 primaries and 3 replicas; `sentinel`),
the bare-framework ceiling (ceiling_app.py: FastAPI answering a constant, gunicorn with 2
UvicornWorkers), the service direct (gunicorn, production settings, 2 workers, every
protection on: token, session check, rate limit, metrics, access log), the same through
`deploy/cluster.py` (nginx + 3 instances) on the same Redis, and with `--peers mlserver`
MLServer with adaptive batching on the same model (peers.py). Then `--rounds` interleaved
rounds (wrk.py): in each, at each connection count, every target's scenarios back to back,
so each goal is a ratio of two numbers of one round. For every run of the service, Redis's
INFO on every primary before and after gives its CPU per request and the EVALSHA cost
(redis_stats.py). Writes reports/bench.{json,md,png}; `--profile` also samples the direct
workers with py-spy under `POST /predict` load, or `--profile-scenario`'s (reports/profile.*).

Exit status: 0 when the measurement worked, even if a goal is MISSED (it is a measurement),
and when a peer could not be installed (the run goes on without it and the report says so);
1 when the tool failed (a server did not start, wrk failed, or any request failed).

This file is the entry point (`make bench` runs it as a script, so its directory is on
sys.path and the modules beside it import each other by name): options, run metadata and
the order of the runs. The rest lives beside it: processes.py (Redis and the servers under
test), ceiling_app.py (the ceiling), peers.py (MLServer), api.py (the bench users and their
tokens), scenarios.py (the requests and the result record), wrk.py (the runs and rounds),
redis_stats.py (INFO deltas), profiling.py (`--profile`) and report.py (goals, tables,
capacity, chart, files).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from api import BENCH_RATE, bench_tokens, check_tokens
from errors import ToolError
from peers import PEERS, PeerUnavailable, ensure_mlserver, mlserver_deployment
from processes import (
    ROOT,
    baseline_tree,
    ceiling_deployment,
    cluster_deployment,
    direct_deployment,
    redis_under_test,
    server_env,
)
from profiling import profile
from report import write_report
from scenarios import PROFILED, Result
from wrk import Target, run_rounds, warm_up

REDIS_MODES = ("standalone", "cluster", "sentinel")
# On a Redis Cluster, enough users that their hash tags spread over the 3 primaries.
CLUSTER_BENCH_USERS = 24


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def git_commit() -> str:
    """The measured commit, "+dirty" when tracked files differ from it."""
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


@contextmanager
def baseline_target(args: argparse.Namespace, work: Path, env: dict[str, str]) -> Iterator[Target]:
    """The service as of `--baseline` (its files exported from git), on a Redis of its own:
    what an older revision keeps in Redis need not match today's keys."""
    with ExitStack() as stack:
        tree = baseline_tree(args.baseline, work / "baseline-src")
        redis = stack.enter_context(redis_under_test(work / "baseline-redis", "standalone"))
        deployment = stack.enter_context(
            direct_deployment(work / "baseline",
                              env | {"PYTHONPATH": str(tree), "MODEL_DIR": str(tree / "var/model")},
                              redis,
                              gunicorn_conf=tree / "deploy" / "gunicorn.conf.py")
        )  # fmt: skip
        assert deployment.admin is not None
        tokens = bench_tokens(deployment.url, deployment.admin, args.bench_users,
                              redis.primary_of_user, v2=False)  # fmt: skip
        tokens_file = work / "baseline-tokens.txt"
        tokens_file.write_text("\n".join(tokens) + "\n")
        yield Target("baseline", deployment, tokens_file)


def _peers(values: list[str]) -> list[str]:
    names = [n for v in values for n in v.replace(",", " ").split()]
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {unknown}; known: {list(PEERS)}")
    return list(dict.fromkeys(names))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds; goals are marked on the worst one")  # fmt: skip
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per instance")
    parser.add_argument("--no-cluster", action="store_true", help="skip the nginx runs")
    parser.add_argument("--peers", nargs="*", default=[], metavar="PEER",
                        help=f"also measure these model servers: {', '.join(PEERS)}")  # fmt: skip
    parser.add_argument("--redis-mode", choices=REDIS_MODES, default="standalone",
                        help="the Redis topology the service runs on")  # fmt: skip
    parser.add_argument(
        "--bench-users", type=int, default=None,
        help=f"bench users whose tokens wrk rotates (default: {CLUSTER_BENCH_USERS} on a "
        "Redis Cluster, so the per-user keys spread over its primaries; 1 otherwise)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="py-spy the direct workers")
    parser.add_argument("--profile-scenario", choices=sorted(PROFILED), default="predict",
                        help="the load --profile samples them under")  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: 1 s runs, 1 round, no cluster (tests)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "var" / "model")
    parser.add_argument("--app", default="service.main:create_app()", help="gunicorn app")
    parser.add_argument("--pythonpath", action="append", default=[], help="A/B runs only")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument(
        "--baseline", metavar="REV", default=None,
        help="also run the service as of this git revision (its own Redis, 2 workers) in "
        "the same rounds, for /healthz, /predict and the batch: a change must not lose more "
        "than 5%% of either's throughput",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.no_cluster = 1, 1, True
    try:
        args.peers = _peers(args.peers)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.bench_users is None:
        args.bench_users = CLUSTER_BENCH_USERS if args.redis_mode == "cluster" else 1
    positive = (args.duration, args.threads, args.rounds, args.bench_users, args.workers,
                min(args.connections))  # fmt: skip
    if min(positive) < 1:
        parser.error(
            "--duration, --threads, --rounds, --bench-users, --workers and --connections "
            "must be positive"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if not (args.model_dir / "model.joblib").exists():
        print(f"no model in {args.model_dir}: run `make model` first", file=sys.stderr)
        return 1
    started = time.monotonic()
    meta: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_before": f"{os.getloadavg()[0]:.2f}",
        "python": platform.python_version(),
        "commit": git_commit(),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "connections": args.connections,
        "wrk_threads": args.threads,
        "workers_per_instance": args.workers,
        "redis_mode": args.redis_mode,
        "bench_users": args.bench_users,
        "bench_rate_override": BENCH_RATE,
        "peers": args.peers,
        "baseline": args.baseline,
        "nginx": not args.no_cluster,
    }
    results: list[Result] = []
    unavailable: dict[str, str] = {}  # peer asked for but not installed: why
    meta["peers_unavailable"] = unavailable
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        if "mlserver" in args.peers:
            try:
                ensure_mlserver()  # before anything starts: the install takes a minute
            except PeerUnavailable as exc:
                # Not a failure of the bench: the run goes on without the peer, and says so.
                args.peers.remove("mlserver")
                unavailable["mlserver"] = "MLServer could not be installed"
                print(f"\nPEER UNAVAILABLE: MLServer could not be installed, so this run goes "
                      f"on without it:\n{exc}\n", flush=True)  # fmt: skip
        with ExitStack() as stack:
            redis = stack.enter_context(redis_under_test(work / "redis", args.redis_mode))
            print(f"redis {redis.describe()}")
            print(f"ceiling: bare FastAPI, gunicorn ({args.workers} UvicornWorkers)")
            ceiling = stack.enter_context(ceiling_deployment(work / "ceiling", args.workers))
            env = server_env(args)
            print(f"direct: the service, gunicorn ({args.workers} workers)")
            direct = stack.enter_context(direct_deployment(work / "direct", env, redis))
            assert direct.admin is not None
            tokens = bench_tokens(direct.url, direct.admin, args.bench_users,
                                  redis.primary_of_user)  # fmt: skip
            tokens_file = work / "tokens.txt"
            tokens_file.write_text("\n".join(tokens) + "\n")
            targets = [Target("ceiling", ceiling), Target("direct", direct, tokens_file)]
            if args.baseline:
                print(f"baseline: the service as of {args.baseline}, gunicorn "
                      f"({args.workers} workers), its own Redis")  # fmt: skip
                targets.append(stack.enter_context(baseline_target(args, work, env)))
            if not args.no_cluster:
                print("nginx: deploy/cluster.py up (3 instances sized to the cores, nginx)")
                nginx = stack.enter_context(
                    cluster_deployment(work / "cluster", env, redis, timeout=120)
                )
                check_tokens(nginx.url, tokens)  # same Redis, same keys: same users
                targets.append(Target("nginx", nginx, tokens_file))
            if "mlserver" in args.peers:
                print("mlserver: mlserver start (2 parallel workers, adaptive batching 64/5 ms)")
                peer = stack.enter_context(mlserver_deployment(work, args.model_dir))
                targets.append(Target("mlserver", peer))
            print(f"all up after {time.monotonic() - started:.0f}s; warming up", flush=True)
            warm_up(targets, args, work)
            results = run_rounds(targets, args, work)
            if args.profile:
                print(f"\nprofiling {PROFILED[args.profile_scenario].name} with py-spy ...")
                profile(targets[1], args, work, args.out)
    except ToolError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["runtime_s"] = round(time.monotonic() - started)
    failed = write_report(results, args, meta)
    print(f"bench took {meta['runtime_s']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
