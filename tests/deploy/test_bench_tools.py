"""Smoke tests of the measuring tools (`make bench`, `make loadtest`): they run end to end
against real processes on free ports, briefly, so a broken tool shows up in `make test`
rather than when someone needs a number."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.support.processes import GunicornProcess, RedisProcess

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / "deploy" / "bench"
BENCH = BENCH_DIR / "bench.py"
LOADTEST = ROOT / "deploy" / "loadtest" / "run.py"
ADMIN = ("admin", "admin-password-for-bench-tools")
PREDICT_LIMIT = 8  # one journey makes at most 7 predict calls: the second one meets a 429


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_profile_analysis_charges_innermost_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bench.py's modules import each other by name, as when bench.py runs as a script.
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    profiling = importlib.import_module("profiling")
    folded = tmp_path / "folded.txt"
    uv = "run (uvicorn/protocols/http/httptools_impl.py:10)"
    limiter = "put (service/limits/limiter.py:140)"
    folded.write_text(
        f"{uv};{limiter};execute (redis/asyncio/client.py:5);write (asyncio/transports.py:1) 3\n"
        f"{uv};decode (service/auth/tokens.py:200);loads (json/__init__.py:1) 1\n"
        f"{uv};{limiter} 1\n"
    )
    analysis = profiling.analyse_folded(folded)
    assert analysis["samples"] == 5
    categories = analysis["categories"]
    assert categories["Redis client (redis-py asyncio)"] == pytest.approx(0.6)
    assert categories["JWT decode (python-jose + auth/tokens.py)"] == pytest.approx(0.2)
    assert categories["rate limiter (fastapi-limiter, pyrate-limiter, limits/limiter.py)"] == 0.2


def test_loadtest_duration_syntax() -> None:
    run = _load(LOADTEST, "loadtest_run_under_test")
    assert [run.seconds(t) for t in ("60", "60s", "2m", "1m30s", "1h")] == [60, 60, 120, 90, 3600]
    with pytest.raises(Exception, match="bad duration"):
        run.seconds("soon")


@pytest.mark.slow
def test_bench_quick_mode(tmp_path: Path, model_dir: Path) -> None:
    """bench.py --quick: its own redis + gunicorn, 1 s wrk runs, report files, exit 0."""
    out = tmp_path / "reports"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out), "--model-dir", str(model_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert len(report["results"]) == 8  # 4 scenarios x 2 connection counts
    for result in report["results"]:
        assert result["requests"] > 0
        assert sum(result["errors"].values()) == 0, result
        assert result["cpu_us_per_req"]["workers"] > 0
    assert {c["status"] for c in report["checks"]} <= {"PASS", "MISSED", "not measured"}
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert "| POST /predict |" in (out / "bench.md").read_text()
    assert "| POST /v2/models/iris-rf/infer |" in (out / "bench.md").read_text()
    assert "V2 infer / POST /predict req/s @64" in {c["name"] for c in report["checks"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[GunicornProcess]:
    tmp_path = tmp_path_factory.mktemp("bench-tools")
    redis = RedisProcess(tmp_path / "redis").start()
    env = {
        "REDIS_URL": redis.url,
        "MODEL_DIR": str(model_dir),
        "JWT_SECRET": secrets.token_urlsafe(48),
        "ADMIN_USERNAME": ADMIN[0],
        "ADMIN_PASSWORD": ADMIN[1],
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST_KIB": "1024",
        "ARGON2_PARALLELISM": "1",
        "WEB_CONCURRENCY": "2",
        "RATE_LIMIT_PREDICT": f"{PREDICT_LIMIT}/minute",
        "LOG_FORMAT": "json",
    }
    gunicorn = GunicornProcess(env, tmp_path / "gunicorn")
    try:
        yield gunicorn.start()
    finally:
        gunicorn.stop()
        redis.stop()


@pytest.mark.slow
def test_loadtest_runner_short_run(tmp_path: Path, server: GunicornProcess) -> None:
    """run.py for 5 s with 2 users: journeys complete, 429s are counted and not failures,
    the HTML report exists, and the accounts made for the run are gone afterwards."""
    out = tmp_path / "reports"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADMIN_")}
    env |= {"ADMIN_USERNAME": ADMIN[0], "ADMIN_PASSWORD": ADMIN[1]}
    done = subprocess.run(
        [sys.executable, str(LOADTEST), "--url", server.url, "--users", "2",
         "--spawn-rate", "2", "--duration", "5s", "--think", "0.01,0.05",
         "--p99-budget-ms", "10000", "--login-p99-budget-ms", "20000",
         "--out", str(out), "--env-file", str(tmp_path / "no.env")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "loadtest.json").read_text())
    assert summary["failed_checks"] == {}
    assert summary["server_errors"] == {}
    assert summary["journeys"]["completed"] >= 2
    assert sum(summary["expected_429"].values()) > 0
    assert summary["endpoints"]["GET /users/me (logged-out token)"]["requests"] >= 2
    assert "<html" in (out / "loadtest.html").read_text().lower()
    assert (out / "loadtest_stats.csv").exists()
    # One table: run.py's own; locust's final statistics go to a file, not the terminal.
    printed = done.stdout + done.stderr
    assert printed.count("\nendpoint ") == 1, printed  # run.py's table header
    assert "Aggregated" not in printed  # locust's request table
    assert "Response time percentiles" not in printed  # and its percentile table
    assert json.loads((out / "loadtest_stats.json").read_text())

    token = httpx.post(
        server.url + "/token",
        data={"grant_type": "password", "username": ADMIN[0], "password": ADMIN[1]},
    ).json()["access_token"]
    users = httpx.get(server.url + "/users", headers={"Authorization": f"Bearer {token}"}).json()
    assert [u["username"] for u in users if u["username"].startswith("lt-")] == []


@pytest.mark.slow
def test_loadtest_fails_on_a_missed_budget(tmp_path: Path, server: GunicornProcess) -> None:
    """A budget nobody can meet makes the exit status non-zero."""
    env = os.environ | {"ADMIN_USERNAME": ADMIN[0], "ADMIN_PASSWORD": ADMIN[1]}
    done = subprocess.run(
        [sys.executable, str(LOADTEST), "--url", server.url, "--users", "1",
         "--spawn-rate", "1", "--duration", "3s", "--think", "0.01,0.02",
         "--p99-budget-ms", "0", "--out", str(tmp_path / "reports"),
         "--env-file", str(tmp_path / "no.env")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "LOADTEST FAILED" in done.stdout
