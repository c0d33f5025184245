"""Observability over the real server: metrics merged over gunicorn workers, JSON logs from
every component with no secret in them, and a SIGTERM that lets in-flight requests finish."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from service.infra.metrics import FLUSH_SECONDS
from tests.support.auth_traffic import exercise_auth, find_leaks
from tests.support.processes import GunicornFactory, GunicornProcess, RedisProcess
from tests.support.prom import value
from tests.support.settings import ADMIN_PASSWORD, ADMIN_USERNAME

pytestmark = pytest.mark.slow

HEALTHZ = {"method": "GET", "route": "/healthz", "status": "200"}


def redis_db(server: RedisProcess, db: int) -> str:
    """A database of the module's Redis for one test, so tests do not share users."""
    return server.url.rsplit("/", 1)[0] + f"/{db}"


def log_lines(server: GunicornProcess) -> list[dict[str, Any]]:
    """Every line gunicorn wrote, each parsed as JSON (failing on any that is not)."""
    assert server.log_path is not None
    text = server.log_path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def metrics_dir(server: GunicornProcess) -> Path:
    for line in log_lines(server):
        if line["message"].startswith("metrics directory "):
            return Path(line["message"].removeprefix("metrics directory "))
    raise AssertionError("gunicorn did not log its metrics directory")


def healthz_per_worker(directory: Path) -> dict[int, float]:
    """Each worker's own count of GET /healthz, read from its file alone."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        alone = directory / f"alone-{path.stem}"
        alone.mkdir(exist_ok=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        text = generate_latest(registry).decode()
        counts[int(path.stem.split("_")[1])] = value(text, "http_requests_total", **HEALTHZ)
        shutil.rmtree(alone)
    return counts


def test_metrics_are_merged_over_all_workers(
    gunicorn_factory: GunicornFactory, module_redis: RedisProcess
) -> None:
    server = gunicorn_factory(redis_db(module_redis, 1))
    directory = metrics_dir(server)
    assert directory.name.startswith("secure-ml-api-metrics-")  # private: no variable set

    def hit(_: int) -> None:
        with httpx.Client(base_url=server.url) as client:  # a new connection each time
            assert client.get("/healthz").status_code == 200

    sent = 0
    deadline = time.monotonic() + 20
    with ThreadPoolExecutor(8) as pool:
        while time.monotonic() < deadline:
            list(pool.map(hit, range(40)))
            sent += 40
            per_worker = healthz_per_worker(directory)
            if len([n for n in per_worker.values() if n > 0]) >= 2:
                break
    assert len([n for n in per_worker.values() if n > 0]) == 2, per_worker
    # Workers fold their tallies into the shared files every FLUSH_SECONDS (the scraping
    # one also right before answering): after that, every request is in.
    time.sleep(FLUSH_SECONDS + 0.5)
    exposition = httpx.get(f"{server.url}/metrics").text
    assert value(exposition, "http_requests_total", **HEALTHZ) == sent
    assert value(exposition, "http_request_duration_seconds_count", **HEALTHZ) == sent
    assert value(exposition, "http_requests_in_flight") == 1  # this scrape
    assert "model_info{version=" in exposition
    assert 'pid="' not in exposition


def test_metrics_directory_is_emptied_at_start_and_dead_workers_are_forgotten(
    gunicorn_factory: GunicornFactory, module_redis: RedisProcess, tmp_path: Path
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    for stale in ("counter_999999.db", "gauge_livesum_999999.db"):
        (directory / stale).write_bytes(b"left over from a previous run")
    server = gunicorn_factory(redis_db(module_redis, 2), PROMETHEUS_MULTIPROC_DIR=str(directory))
    assert not (directory / "counter_999999.db").exists()
    assert not (directory / "gauge_livesum_999999.db").exists()
    assert httpx.get(f"{server.url}/metrics").status_code == 200

    # Workers create their files when they first count something (the app is preloaded in
    # the master, whose import-time files the start-up clean-up removed).
    deadline = time.monotonic() + 10
    with ThreadPoolExecutor(max_workers=8) as pool:
        while len(list(directory.glob("gauge_livesum_*.db"))) < 2:
            assert time.monotonic() < deadline, "both workers never counted a request"
            list(pool.map(lambda _: httpx.get(f"{server.url}/healthz"), range(16)))
    pids = sorted(int(p.stem.rsplit("_", 1)[1]) for p in directory.glob("gauge_livesum_*.db"))
    assert len(pids) == 2
    assert server.proc is not None
    assert server.proc.pid not in pids  # workers, never the master
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (directory / f"gauge_livesum_{pids[0]}.db").exists():
        assert time.monotonic() < deadline, "the dead worker's live gauges are still there"
        time.sleep(0.05)
    server.wait_ready()
    # Only this scrape is in flight, once every live worker has folded in its last tally.
    time.sleep(FLUSH_SECONDS + 0.5)
    exposition = httpx.get(f"{server.url}/metrics").text
    assert value(exposition, "http_requests_in_flight") == 1
    server.stop()
    assert directory.is_dir()  # the operator's directory stays; only private ones go


def test_logs_are_json_from_every_component_and_hold_no_secret(
    gunicorn_factory: GunicornFactory, module_redis: RedisProcess, shared_secret: str
) -> None:
    server = gunicorn_factory(redis_db(module_redis, 3))

    async def traffic() -> list[str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            return await exercise_auth(client)

    secrets = asyncio.run(traffic())
    traced = httpx.get(f"{server.url}/healthz", headers={"X-Request-ID": "trace-me-42"})
    assert traced.headers["x-request-id"] == "trace-me-42"
    assert "server" not in traced.headers
    assert traced.headers["x-content-type-options"] == "nosniff"
    directory = metrics_dir(server)
    server.stop()

    lines = log_lines(server)
    for line in lines:
        assert {"time", "level", "logger", "message", "instance"} <= line.keys(), line
        assert line["instance"].startswith("test-")
    loggers = {line["logger"] for line in lines}
    assert {"gunicorn.error", "uvicorn.error", "service.main", "service.access"} <= loggers
    messages = [line["message"] for line in lines]
    assert any(m.startswith("ready: model ") for m in messages)
    assert "stopped" in messages
    assert "Shutting down: Master" in messages
    access = [line for line in lines if line["logger"] == "service.access"]
    (health,) = [line for line in access if line["request_id"] == "trace-me-42"]
    assert health["route"] == "/healthz"
    assert health["status"] == 200
    assert health["client_ip"] == "127.0.0.1"
    assert isinstance(health["duration_ms"], float)
    users = {line["user"] for line in access if line["route"] == "/users"}
    assert users == {ADMIN_USERNAME}

    assert server.log_path is not None
    assert find_leaks(server.log_path.read_text(), [*secrets, shared_secret]) == []
    assert not directory.exists()  # the private metrics directory went with the master


def test_sigterm_lets_an_in_flight_request_finish(
    gunicorn_factory: GunicornFactory, module_redis: RedisProcess
) -> None:
    """A request still uploading its body when SIGTERM arrives gets its full answer; new
    connections are refused meanwhile, and the master exits cleanly afterwards."""
    server = gunicorn_factory(redis_db(module_redis, 4), GRACEFUL_TIMEOUT="20")
    token = httpx.post(
        f"{server.url}/token",
        data={"grant_type": "password", "username": ADMIN_USERNAME, "password": ADMIN_PASSWORD},
    ).json()["access_token"]
    body = json.dumps({"data": [5.1, 3.5, 1.4, 0.2]}).encode()
    head = (
        "POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    assert server.proc is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(head + body[:10])
        time.sleep(0.5)  # the worker has parsed the headers and waits for the body
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/healthz", timeout=2)
        assert server.proc.poll() is None  # still waiting for our request
        sock.sendall(body[10:])
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK", response
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["label"] == "setosa"
    assert server.proc.wait(timeout=20) == 0
