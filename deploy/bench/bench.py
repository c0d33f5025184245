"""`make bench`: throughput and latency of the main endpoints, as ratios to the framework's
own ceiling measured in the same run.

Starts its own redis-server and gunicorn (production settings, 2 workers) on free ports,
creates a bench user whose rate limit cannot interfere, and drives wrk (deploy/bench/
bench.lua) over `GET /healthz` (the ceiling), `POST /predict`, the same row through the Open
Inference Protocol (`POST /v2/models/iris-rf/infer`, JSON FP32 [1, 4]) and `POST
/predict/batch` with 64 rows, at each connection count; then the same through
`deploy/cluster.py` (nginx + 3 instances) on free ports. Writes reports/bench.{json,md,png};
`--profile` also samples the workers with py-spy under `POST /predict` load
(reports/profile.*).

Exit status: 0 when the measurement worked, even if a target is MISSED (it is a measurement);
1 when the tool failed (a server did not start, wrk failed, or any request failed).

This file is the entry point (`make bench` runs it as a script, so its directory is on
sys.path and the modules beside it import each other by name): options, run metadata and
the order of the runs. The rest lives beside it: processes.py (the servers under test),
api.py (the bench user and its token), scenarios.py (the requests and the result record),
wrk.py (the runs), profiling.py (`--profile`) and report.py (targets, tables, chart, files).
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
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from api import BENCH_RATE
from errors import ToolError
from processes import ROOT, cluster_deployment, direct_deployment, server_env
from profiling import profile
from report import write_report
from scenarios import Result
from wrk import run_target


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
    failed = write_report(results, args, meta)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
