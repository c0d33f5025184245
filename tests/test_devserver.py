"""`make run`'s server: writes a private .env, starts its own Redis, serves, stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
from dotenv import dotenv_values

from tests.support.processes import free_port


def test_devserver_end_to_end(tmp_path: Path, model_dir: Path) -> None:
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "BIND": f"127.0.0.1:{port}",
        "MODEL_DIR": str(model_dir),
        "WEB_CONCURRENCY": "1",
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST_KIB": "1024",
        "ARGON2_PARALLELISM": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.devserver"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        env_file = tmp_path / ".env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        values = dotenv_values(env_file)
        assert len(values["JWT_SECRET"] or "") >= 32
        password = values["ADMIN_PASSWORD"]
        assert password
        login = httpx.post(f"{base}/token", data={"username": "admin", "password": password})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        response = httpx.post(
            f"{base}/predict", json={"data": [5.1, 3.5, 1.4, 0.2]}, headers=headers
        )
        assert response.json()["label"] == "setosa"
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    text = output.decode()
    assert "stopped redis-server" in text
    assert password not in text
    redis_pid = int(text.split("started redis-server (pid ")[1].split(")")[0])
    assert not Path(f"/proc/{redis_pid}").exists()
