"""Where a worker's CPU goes under load (`POST /predict` unless `--profile-scenario` says
another): py-spy sampling and its analysis.

`--profile` only. py-spy records two workers while wrk drives the load; the collapsed stacks
are charged to libraries (JWT, Redis client, pydantic, ...) and to a few functions of the
hot path, and written as reports/profile.{json,md,svg}.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from errors import ToolError
from scenarios import PROFILED
from wrk import Target, measure


def _lib(*names: str) -> re.Pattern[str]:
    """A frame of one of these packages: py-spy prints paths relative to sys.path."""
    return re.compile(r"[(/](?:" + "|".join(names) + ")/")


# (label, path or function pattern, absorbing): a sample is charged to the innermost
# matching frame, except that an absorbing category keeps everything called below it
# (e.g. json.loads inside python-jose is JWT cost, asyncio writes inside redis-py are
# Redis client cost).
CATEGORIES: list[tuple[str, re.Pattern[str], bool]] = [
    ("JWT decode (python-jose + auth/tokens.py)",
     re.compile(r"[(/](jose|ecdsa|cryptography)/|service/auth/tokens\.py"), True),
    ("Redis client (redis-py asyncio)", _lib("redis"), True),
    ("model inference (forest, numpy)", _lib("service/ml", "numpy", "sklearn"), True),
    ("pydantic validation", re.compile(r"[(/](pydantic|pydantic_core)/|fastapi/_compat"), True),
    ("logging", re.compile(r"[(/]logging/|service/infra/logs"), True),
    ("metrics (prometheus_client)", re.compile(r"[(/]prometheus_client/|metrics\.py"), True),
    ("JSON (json stdlib, fastapi encoders)", re.compile(r"[(/]json/|fastapi/encoders"), True),
    ("rate limiter (fastapi-limiter, pyrate-limiter, limits/limiter.py)",
     re.compile(r"[(/](fastapi_limiter|pyrate_limiter)/|service/limits/limiter\.py"), False),
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
    ("Gate._run (Redis round trip incl. client)", r"Gate\._run \("),
    ("PolicyLimiter.__call__ (whole limiter)", r"PolicyLimiter\.__call__ \("),
    ("admit_prediction dependency", r"admit_prediction \("),
    ("solve_dependencies (FastAPI DI)", r"solve_dependencies \("),
    ("sync dependencies in the thread pool", r"run_in_threadpool \(|WorkerThread\.run \("),
    ("request body validation", r"(request_body_to_args|_validate_value_with_model_field) \("),
    ("predict endpoint body", r"predict \(service/api/routes/predict\.py"),
    ("_predictions (forest + dicts)", r"_predictions \("),
    ("ForestPredictor.predict_proba", r"ForestPredictor\.predict_proba \("),
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


def profile(target: Target, args: argparse.Namespace, work: Path, out: Path) -> dict[str, Any]:
    """py-spy on both workers of `target` (the direct service) while wrk drives the
    `--profile-scenario` (POST /predict by default) at the highest connection count: one
    worker recorded as a flame graph (SVG), the other as collapsed stacks to analyse."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    workers = target.deployment.workers()
    if len(workers) < 2 or not Path(py_spy).exists():
        raise ToolError("profiling needs py-spy and two workers")
    # Past the end of the load: py-spy attaches for a second first, and an idle worker adds
    # no samples (idle threads are not recorded).
    seconds = args.duration + 2
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
    scenario = PROFILED[args.profile_scenario]
    result = measure(target, scenario, max(args.connections), args, work)
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
        f"# Profile of {scenario.name} at {result.connections} connections (py-spy, one worker)",
        "",
        f"{result.rps:,.0f} req/s under py-spy (sampling slows it), p99 {result.p99_ms:.1f} ms; "
        f"worker CPU {worker_us:.0f} µs per request (both workers), "
        f"redis-server {result.cpu_us_per_req.get('redis', 0):.0f} µs "
        f"(EVALSHA {result.redis.evalsha_us_per_call if result.redis else '-'} µs per call); "
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
