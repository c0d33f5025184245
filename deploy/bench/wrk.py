"""Driving wrk: one run of a scenario, its numbers with the servers' CPU per request, and a
target's whole series (warm-up, then every scenario at every connection count).

wrk runs bench.lua, whose done() prints exact percentiles as one JSON line; that line, not
wrk's rounded table, is what is parsed here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from api import bench_token
from errors import ToolError
from processes import Deployment, cpu_seconds
from scenarios import SCENARIOS, Result, Scenario

LUA = Path(__file__).with_name("bench.lua")


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
                f"  {target:<6} {scenario.name:<29} c={connections:<3} "
                f"{result.rps:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                f"p99 {result.p99_ms:7.2f} ms  errors {sum(result.errors.values())}",
                flush=True,
            )
            results.append(result)
    return results
