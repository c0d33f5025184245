"""Smoke tests of the measuring tools (`make bench`, `make loadtest`): they run end to end
against real processes on free ports, briefly, so a broken tool shows up in `make test`
rather than when someone needs a number."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

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


def _bench_module(name: str) -> ModuleType:
    """One of deploy/bench's modules; they import each other by name, as when bench.py runs
    as a script, so their directory is on sys.path while they are imported."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH_DIR))


def _result(
    target: str, scenario: str, conns: int, round_: int = 1, rps: float = 1000.0,
    p50: float = 10.0, p99: float = 20.0, redis: Any = None, worker_us: float = 500.0,
) -> Any:  # fmt: skip
    scenarios = _bench_module("scenarios")
    return scenarios.Result(
        target=target, scenario=scenario, connections=conns, rps=rps, p50_ms=p50,
        p90_ms=p50, p99_ms=p99, p999_ms=p99, max_ms=p99, requests=int(rps * 10),
        errors={"connect": 0, "status": 0}, cpu_us_per_req={"workers": worker_us},
        round=round_, redis=redis,
    )  # fmt: skip


def _round(round_: int, ceiling_rps: float, predict_rps: float, **kw: Any) -> list[Any]:
    """One round's results at 16 and 64 connections: ceiling, direct /predict, V2, batch."""
    s = _bench_module("scenarios")
    out = []
    for conns in (16, 64):
        out += [
            _result("ceiling", s.CEILING, conns, round_, rps=ceiling_rps, p50=1, p99=2),
            _result("direct", s.PREDICT, conns, round_, rps=predict_rps, p50=10, p99=20, **kw),
            _result("direct", s.V2_INFER, conns, round_, rps=predict_rps * 0.9, p50=10, p99=30),
            _result("direct", s.BATCH, conns, round_, rps=predict_rps / 2, p50=19, p99=45),
        ]
    return out


def test_goal_status_is_marked_on_the_worst_round() -> None:
    report = _bench_module("report")
    high = report.Goal("share", [0.45, 0.38], 0.40, "share", higher_is_better=True)
    assert (high.worst, high.status) == (0.38, "MISSED")
    assert report.Goal("share", [0.45, 0.41], 0.40, "share", True).status == "PASS"
    low = report.Goal("tail", [1.9, 2.6], 2.5, "x", higher_is_better=False)
    assert (low.worst, low.status) == (2.6, "MISSED")
    assert report.Goal("tail", [1.9, 2.5], 2.5, "x", False).status == "PASS"  # bound included
    assert report.Goal("x", [None, None], 4.0, "x", True).status == "not measured"
    assert report.Goal("x", [None, 5.0], 4.0, "x", True).status == "PASS"


def test_goals_are_ratios_within_each_round() -> None:
    report = _bench_module("report")
    s = _bench_module("scenarios")
    # Round 1: predict is 50% of the ceiling; round 2: 30% (a slower predict, same ceiling).
    results = _round(1, 10_000, 5_000) + _round(2, 10_000, 3_000)
    results.append(_result("mlserver", s.MLSERVER, 64, 1, rps=1_000))
    found = {g.name: g for g in report.goals(results)}
    predict = found["POST /predict @64 / ceiling (req/s)"]
    assert predict.per_round == [pytest.approx(0.5), pytest.approx(0.3)]
    assert predict.status == "MISSED"
    v2 = found["V2 infer @64 / ceiling (req/s)"]
    assert v2.per_round == [pytest.approx(0.45), pytest.approx(0.27)]
    assert v2.status == "MISSED"
    mlserver = found["POST /predict @64 / MLServer V2 infer @64 (req/s)"]
    assert mlserver.per_round == [pytest.approx(5.0), None]  # round 2 has no MLServer run
    assert mlserver.status == "PASS"
    for conns in (64, 16):
        tail = found[f"POST /predict @{conns}: p99 / p50"]
        assert (tail.worst, tail.status) == (pytest.approx(2.0), "PASS")
        p50 = found[f"batch of 64 rows / one row @{conns}: p50 latency"]
        assert (p50.worst, p50.status) == (pytest.approx(1.9), "PASS")
        p99 = found[f"batch of 64 rows / one row @{conns}: p99 latency"]
        assert (p99.worst, p99.status) == (pytest.approx(2.25), "MISSED")
        nginx = found[f"nginx (3 instances) / direct POST /predict @{conns} (req/s)"]
        assert nginx.status == "not measured"
        assert "nginx not run" in nginx.why_not


def test_a_baseline_revision_is_a_goal_of_at_most_5_percent_lost() -> None:
    """For /predict and for the batch, each at 16 and 64 connections."""
    report = _bench_module("report")
    s = _bench_module("scenarios")
    results = _round(1, 10_000, 3_000)
    assert not any("baseline" in g.name for g in report.goals(results))
    results += [
        _result("baseline", s.PREDICT, 64, 1, rps=3_100),
        _result("baseline", s.PREDICT, 16, 1, rps=3_500),
        _result("baseline", s.BATCH, 64, 1, rps=1_700),
        _result("baseline", s.BATCH, 16, 1, rps=1_500),
    ]
    found = {g.name: g for g in report.goals(results)}
    at64 = found["POST /predict @64 / the baseline revision's (req/s)"]
    assert (at64.worst, at64.status) == (pytest.approx(3_000 / 3_100), "PASS")
    at16 = found["POST /predict @16 / the baseline revision's (req/s)"]
    assert (at16.worst, at16.status) == (pytest.approx(3_000 / 3_500), "MISSED")
    batch64 = found[f"{s.BATCH} @64 / the baseline revision's (req/s)"]
    assert (batch64.worst, batch64.status) == (pytest.approx(1_500 / 1_700), "MISSED")
    batch16 = found[f"{s.BATCH} @16 / the baseline revision's (req/s)"]
    assert (batch16.worst, batch16.status) == (pytest.approx(1), "PASS")


def test_goal_of_a_peer_that_could_not_be_installed_says_why() -> None:
    report = _bench_module("report")
    results = _round(1, 10_000, 5_000)
    name = "POST /predict @64 / MLServer V2 infer @64 (req/s)"
    plain = {g.name: g for g in report.goals(results)}[name]
    assert plain.status == "not measured"
    assert "PEERS=mlserver" in plain.why_not
    failed = {g.name: g for g in report.goals(results, {"mlserver": "install failed"})}[name]
    assert failed.why_not == "install failed"
    _, rows = report.goal_rows([failed])
    assert rows[0][-1] == "not measured (install failed)"


def test_goal_rows_show_every_round_the_worst_and_the_status() -> None:
    report = _bench_module("report")
    found = [
        report.Goal("a share", [0.5, 0.3], 0.40, "share", True),
        report.Goal("a tail", [1.5, None], 2.5, "x", False),
    ]
    headers, rows = report.goal_rows(found)
    assert headers == ["goal", "round 1", "round 2", "worst", "wanted", "status"]
    assert rows[0] == ["a share", "50%", "30%", "30%", ">= 40%", "MISSED"]
    assert rows[1] == ["a tail", "1.50x", "-", "1.50x", "<= 2.50x", "PASS"]
    text = report.text_table(headers, rows).splitlines()
    assert text[0].split() == ["goal", "round", "1", "round", "2", "worst", "wanted", "status"]
    assert set(text[1]) == {"-", " "}
    assert len({len(line.rstrip()) <= len(text[1]) for line in text}) == 1
    md = report.md_table(headers, rows).splitlines()
    assert md[2] == "| a share | 50% | 30% | 30% | >= 40% | MISSED |"
    # A value that only rounds to the threshold keeps the digits that show it missed.
    close = [report.Goal("batch", [2.0045, 2.0], 2.0, "x", False),
             report.Goal("share", [0.3996], 0.40, "share", True)]  # fmt: skip
    _, rows = report.goal_rows(close)
    assert rows[0][1:] == ["2.005x", "2.00x", "2.005x", "<= 2.00x", "MISSED"]
    assert rows[1][1:] == ["39.96%", "39.96%", ">= 40%", "MISSED"]


def test_redis_usage_sums_cpu_over_primaries_per_request() -> None:
    stats = _bench_module("redis_stats")

    def info(cpu_user: float, cpu_sys: float, calls: int, usec: int, cmds: int) -> dict[str, Any]:
        evalsha = {"calls": calls, "usec": usec} if calls else None
        return {"used_cpu_user": cpu_user, "used_cpu_sys": cpu_sys,
                "cmdstat_evalsha": evalsha, "total_commands_processed": cmds}  # fmt: skip

    before = {
        "node0": stats.RedisSample.from_info(info(1.0, 0.5, 0, 0, 10)),  # no EVALSHA yet
        "node1": stats.RedisSample.from_info(info(2.0, 1.0, 100, 1_000, 200)),
    }
    after = {
        "node0": stats.RedisSample.from_info(info(1.2, 0.6, 600, 9_000, 1_010)),
        "node1": stats.RedisSample.from_info(info(2.1, 1.1, 500, 5_000, 700)),
    }
    use = stats.usage(before, after, requests=1_000)
    # 0.3 s + 0.2 s of CPU over 1000 requests: 500 µs per request.
    assert use.cpu_us_per_req == pytest.approx(500.0)
    assert use.evalsha_calls_per_req == pytest.approx(1.0)  # 600 + 400 calls
    assert use.evalsha_us_per_call == pytest.approx(13.0)  # (9000 + 4000) / 1000
    assert use.commands_per_req == pytest.approx(1.5)
    assert use.primaries["node0"].cpu_us_per_req == pytest.approx(300.0)
    assert use.primaries["node0"].evalsha_share == pytest.approx(0.6)
    assert use.primaries["node1"].evalsha_us_per_call == pytest.approx(10.0)
    # No request (wrk got nothing through): per request of at least one, never a division by 0.
    assert stats.usage(before, before, requests=0).cpu_us_per_req == 0.0


def test_capacity_summary_line() -> None:
    report = _bench_module("report")
    stats = _bench_module("redis_stats")

    def use(us: float) -> Any:
        primary = stats.PrimaryUse(us, 1000, 1.0, us / 2)
        return stats.RedisUse(us, us / 2, 1.0, 1.0, {"redis0": primary})

    results = _round(1, 10_000, 2_000, redis=use(25.0), worker_us=800.0)
    results += _round(2, 10_000, 2_500, redis=use(40.0), worker_us=800.0)
    found = report.capacity(results, workers=2)
    assert [c.round for c in found] == [1, 2]
    assert found[1].gated_rps_per_redis_core == 25_000  # 1e6 / 40 µs
    assert found[1].instances_per_redis_core == 10.0  # 25,000 / 2,500 req/s
    assert found[1].instances_per_redis_core_by_cpu == 10.0  # 2 cores / 800 µs = 2,500 req/s
    summary = report.capacity_summary(found, "standalone")
    assert summary == (
        "CAPACITY (Redis standalone, round 2 of 2, the costliest): 40.0 µs Redis CPU per gated "
        "request | 25,000 gated req/s per Redis core | 10.0 API instances (2 workers, "
        "2,500 req/s each) per Redis core (10.0 by API CPU)"
    )
    assert report.capacity_summary([], "standalone") is None
    lines = report.capacity_lines(found, "cluster")
    assert lines[0].startswith("round 1 (direct POST /predict @64, Redis cluster): 25.0 µs")


def test_rounds_interleave_targets_within_each_connection_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrk = _bench_module("wrk")
    processes = _bench_module("processes")
    order: list[tuple[int, int, str, str]] = []

    def fake_measure(target: Any, scenario: Any, conns: int, args: Any, work: Path,
                     round_: int = 1) -> Any:  # fmt: skip
        order.append((round_, conns, target.name, scenario.name))
        return _result(target.name, scenario.name, conns, round_)

    monkeypatch.setattr(wrk, "measure", fake_measure)
    deployment = processes.Deployment(url="http://127.0.0.1:1", workers=list)
    targets = [wrk.Target(name, deployment) for name in ("ceiling", "direct", "mlserver")]
    args = argparse.Namespace(rounds=2, connections=[16, 64])
    results = wrk.run_rounds(targets, args, tmp_path)
    s = _bench_module("scenarios")
    one = [("ceiling", s.CEILING), *(("direct", x.name) for x in s.SCENARIOS),
           ("mlserver", s.MLSERVER)]  # fmt: skip
    assert order == [(r, c, t, n) for r in (1, 2) for c in (16, 64) for t, n in one]
    assert [(x.round, x.connections, x.target, x.scenario) for x in results] == order


def test_bench_users_spread_evenly_over_the_primaries() -> None:
    api = _bench_module("api")
    assert api.bench_usernames(1) == ["bench-user"]
    assert api.bench_usernames(3) == ["bench-user-001", "bench-user-002", "bench-user-003"]

    def primary_of(name: str) -> str:  # a skewed owner: 2 of 3 names land on "a"
        return "b" if int(name[-3:]) % 3 == 0 else "a"

    names = api.bench_usernames(6, primary_of)
    assert len(set(names)) == 6
    assert sorted(primary_of(n) for n in names) == ["a", "a", "a", "b", "b", "b"]


def test_mlserver_install_failure_is_a_peer_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peers = _bench_module("peers")
    errors = _bench_module("errors")

    def pip_fails(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(peers.subprocess, "run", pip_fails)
    with pytest.raises(peers.PeerUnavailable, match="No matching distribution") as caught:
        peers.ensure_mlserver(tmp_path / "mlserver")
    assert isinstance(caught.value, errors.ToolError)
    pins = peers.mlserver_pins()
    assert "uvloop==0.21.0" in pins
    assert "mlserver==1.7.1" in pins
    assert "mlserver-sklearn==1.7.1" in pins
    server, model = peers.mlserver_settings(1, 2, 3, tmp_path / "model.joblib")
    assert (model["max_batch_size"], model["max_batch_time"]) == (64, 0.005)
    assert server["host"] == "127.0.0.1"


def test_make_bench_passes_rounds_peers_and_redis_mode() -> None:
    def dry_run(*assignments: str) -> str:
        done = subprocess.run(
            ["make", "-n", "--no-print-directory", "bench", *assignments], cwd=ROOT,
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return next(line for line in done.stdout.splitlines() if "bench.py" in line)

    default = dry_run()
    assert "--rounds 2 --redis-mode standalone" in default
    assert "--peers" not in default
    chosen = dry_run("ROUNDS=3", "PEERS=mlserver", "REDIS_MODE=cluster", "BASELINE=abc123")
    assert "--rounds 3 --redis-mode cluster" in chosen
    assert chosen.rstrip().endswith("--peers mlserver --baseline abc123")


def test_profile_analysis_charges_innermost_library(tmp_path: Path) -> None:
    profiling = _bench_module("profiling")
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
    """bench.py --quick: its own Redis, the ceiling, the service and the service as of HEAD
    (`--baseline`: exported from git, its own model and Redis), 1 round of 1 s wrk runs, the
    goals and the capacity line printed, report files, exit 0 (missed goals included); and
    `--profile` under the batch scenario: py-spy's samples charged to the libraries."""
    out = tmp_path / "reports"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out), "--model-dir", str(model_dir),
         "--baseline", "HEAD", "--profile", "--profile-scenario", "batch"],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    # One round, at 16 and 64 connections: the ceiling, the service's 4 scenarios and the
    # baseline's /healthz, /predict and batch.
    assert len(report["results"]) == 16
    assert [(r["connections"], r["target"]) for r in report["results"]] == [
        (c, t) for c in (16, 64) for t in ("ceiling", *["direct"] * 4, *["baseline"] * 3)
    ]
    for result in report["results"]:
        assert result["requests"] > 0
        assert sum(result["errors"].values()) == 0, result
        assert result["cpu_us_per_req"]["workers"] > 0
        if result["scenario"] == "POST /predict":
            assert result["redis"]["cpu_us_per_req"] > 0
            assert result["redis"]["evalsha_calls_per_req"] >= 0.9
    goals = {g["name"]: g["status"] for g in report["goals"]}
    assert set(goals.values()) <= {"PASS", "MISSED", "not measured"}
    assert goals["POST /predict @64 / ceiling (req/s)"] in {"PASS", "MISSED"}
    assert goals["V2 infer @64 / ceiling (req/s)"] in {"PASS", "MISSED"}
    assert goals["POST /predict @64 / the baseline revision's (req/s)"] in {"PASS", "MISSED"}
    assert goals["POST /predict/batch (64) @64 / the baseline revision's (req/s)"] in {
        "PASS",
        "MISSED",
    }
    assert report["capacity_summary"].startswith("CAPACITY (Redis standalone")
    printed = done.stdout
    assert "goals (each a ratio within one round" in printed
    assert "POST /predict @64 / ceiling (req/s)" in printed
    assert "CAPACITY (Redis standalone" in printed
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")
    md = (out / "bench.md").read_text()
    assert "| POST /predict |" in md
    assert "| POST /v2/models/iris-rf/infer |" in md
    profile = json.loads((out / "profile.json").read_text())
    assert profile["samples"] > 0
    assert profile["under_load"]["scenario"] == "POST /predict/batch (64)"
    assert profile["inclusive"]["ForestPredictor.predict_proba"] > 0
    assert (out / "profile.md").read_text().startswith("# Profile of POST /predict/batch (64)")


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
