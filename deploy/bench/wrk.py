"""Driving wrk: one run of a scenario, its numbers with the servers' CPU and Redis's INFO per
request, and the interleaved rounds of a whole bench.

wrk runs bench.lua, whose done() prints exact percentiles as one JSON line; that line, not
wrk's rounded table, is what is parsed here.

Rounds: every target is started before the first run and stays up until the last; a round
runs, at each connection count, every target's scenarios back to back (ceiling, the
service direct, through nginx, MLServer), so the numbers a goal compares were taken a few
seconds apart, under the same load from whatever else the machine is doing; the report
takes each goal's ratio within a round.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from errors import ToolError
from processes import Deployment, cpu_seconds
from redis_stats import usage
from scenarios import TARGET_SCENARIOS, Result, Scenario

LUA = Path(__file__).with_name("bench.lua")


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise ToolError("wrk not found: apt-get install wrk (or brew install wrk)")
    return found


@dataclass
class Target:
    """A running deployment, what it is called in the report, and the bearer tokens its
    authenticated scenarios send (a file of one token per line, for bench.lua)."""

    name: str
    deployment: Deployment
    tokens_file: Path | None = None

    @property
    def scenarios(self) -> tuple[Scenario, ...]:
        return TARGET_SCENARIOS[self.name]


def run_wrk(
    url: str,
    scenario: Scenario,
    connections: int,
    duration: int,
    threads: int,
    tokens_file: Path | None,
    work: Path,
) -> dict[str, Any]:
    """One wrk run; returns the JSON that bench.lua's done() printed."""
    body_file = ""
    if scenario.body is not None:
        path = work / f"body-{re.sub(r'[^a-z0-9]+', '-', scenario.name.lower())}.json"
        path.write_bytes(scenario.body)
        body_file = str(path)
    if scenario.auth and tokens_file is None:
        raise ToolError(f"{scenario.name} needs bench tokens")
    env = os.environ | {
        "BENCH_METHOD": scenario.method,
        "BENCH_TOKENS_FILE": str(tokens_file) if scenario.auth else "",
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
    target: Target,
    scenario: Scenario,
    connections: int,
    args: argparse.Namespace,
    work: Path,
    round_: int = 1,
) -> Result:
    deployment = target.deployment
    pids = deployment.pids()
    redis_before = deployment.redis.sample() if deployment.redis else None
    before = {kind: sum(cpu_seconds(p) for p in group) for kind, group in pids.items()}
    raw = run_wrk(
        deployment.url, scenario, connections, args.duration, args.threads, target.tokens_file,
        work,
    )  # fmt: skip
    after = {kind: sum(cpu_seconds(p) for p in group) for kind, group in pids.items()}
    redis_after = deployment.redis.sample() if deployment.redis else None
    requests = max(1, int(raw["requests"]))
    lat = raw["latency_us"]
    redis = (
        usage(redis_before, redis_after, requests)
        if redis_before is not None and redis_after is not None
        else None
    )
    return Result(
        target=target.name,
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
        round=round_,
        redis=redis,
    )


def warm_up(targets: list[Target], args: argparse.Namespace, work: Path) -> None:
    """1 s of every target's scenarios (not recorded): fills the connection pools, the
    per-worker token caches and the CPU caches."""
    for target in targets:
        for scenario in target.scenarios:
            run_wrk(
                target.deployment.url, scenario, max(args.connections), 1, args.threads,
                target.tokens_file, work,
            )  # fmt: skip


def run_rounds(targets: list[Target], args: argparse.Namespace, work: Path) -> list[Result]:
    """`args.rounds` rounds; in each, at each connection count, every target's scenarios."""
    results = []
    for round_ in range(1, args.rounds + 1):
        print(f"\nround {round_} of {args.rounds}", flush=True)
        for connections in args.connections:
            for target in targets:
                for scenario in target.scenarios:
                    result = measure(target, scenario, connections, args, work, round_)
                    redis = (
                        f"  redis {result.redis.cpu_us_per_req:5.1f} µs/req"
                        if result.redis is not None and scenario.auth
                        else ""
                    )
                    print(
                        f"  {target.name:<8} {scenario.name:<37} c={connections:<3} "
                        f"{result.rps:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                        f"p99 {result.p99_ms:7.2f} ms  errors {sum(result.errors.values())}"
                        + redis,
                        flush=True,
                    )
                    results.append(result)
    return results
