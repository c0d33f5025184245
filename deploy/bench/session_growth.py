"""What a user's traffic leaves in Redis: keys and bytes after many refreshes and many
logout/login cycles of one user (issue: a key per refresh and per logout, for a day).

Starts a private redis-server on a free port and the app in-process (whatever `service`
package is importable, so `PYTHONPATH=<other checkout>` measures another version), then
drives the public HTTP API only:

    python deploy/bench/session_growth.py --refreshes 10000 --cycles 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

PASSWORD = secrets.token_urlsafe(18)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _snapshot(client: redis.Redis) -> dict[str, int]:
    keys = list(client.scan_iter("sma:*"))
    usage = sum(int(client.memory_usage(key) or 0) for key in keys)
    return {
        "keys": len(keys),
        "key_bytes": usage,
        "used_memory": int(client.info("memory")["used_memory"]),
    }


async def _drive(refreshes: int, cycles: int, admin: tuple[str, str]) -> None:
    from service.main import create_app  # the version on sys.path

    app = create_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            token = await _login(http, *admin)
            body = {"username": "growth", "password": PASSWORD, "scopes": ["predict"]}
            created = await http.post("/users", json=body, headers=_bearer(token["access_token"]))
            assert created.status_code == 201, created.text
            pair = await _login(http, "growth", PASSWORD)
            for _ in range(refreshes):
                answer = await http.post(
                    "/token/refresh", json={"refresh_token": pair["refresh_token"]}
                )
                assert answer.status_code == 200, answer.text
                pair = answer.json()
            for _ in range(cycles):
                logout = {"refresh_token": pair["refresh_token"]}
                answer = await http.post(
                    "/logout", json=logout, headers=_bearer(pair["access_token"])
                )
                assert answer.status_code == 204, answer.text
                pair = await _login(http, "growth", PASSWORD)


async def _login(http: httpx.AsyncClient, username: str, password: str) -> dict[str, Any]:
    answer = await http.post(
        "/token", data={"grant_type": "password", "username": username, "password": password}
    )
    assert answer.status_code == 200, answer.text
    tokens: dict[str, Any] = answer.json()
    return tokens


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=1_000)
    parser.add_argument("--model-dir", type=Path, default=Path("var/model"))
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found")
    port = _free_port()
    data = tempfile.mkdtemp(prefix="session-growth-")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", data],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, decode_responses=True)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        admin = ("growth-admin", secrets.token_urlsafe(18))
        os.environ |= {
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "JWT_SECRET": secrets.token_urlsafe(48),
            "ADMIN_USERNAME": admin[0],
            "ADMIN_PASSWORD": admin[1],
            "MODEL_DIR": str(args.model_dir.resolve()),
            "ARGON2_TIME_COST": "1",
            "ARGON2_MEMORY_COST_KIB": "1024",
            "LOG_LEVEL": "warning",
            **{
                f"RATE_LIMIT_{name}": "100000/second"
                for name in ("PREDICT", "LOGIN", "LOGIN_IP", "PUBLIC")
            },
            "RATE_LIMIT_LOGIN_USER": "100000/second",
        }
        before = _snapshot(client)
        started = time.perf_counter()
        asyncio.run(_drive(args.refreshes, args.cycles, admin))
        after = _snapshot(client)
        result = {
            "refreshes": args.refreshes,
            "cycles": args.cycles,
            "seconds": round(time.perf_counter() - started, 1),
            "before": before,
            "after": after,
            "added_keys": after["keys"] - before["keys"],
            "added_key_bytes": after["key_bytes"] - before["key_bytes"],
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
