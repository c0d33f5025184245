"""`make run`'s server: writes a private .env, starts its own Redis (ACL, memory cap),
serves, stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from dotenv import dotenv_values
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.devserver import (
    REDIS_API_USER,
    ensure_env_value,
    redis_acl,
    redis_config,
    redis_maxmemory,
)
from tests.support.processes import free_port

OLD_ENV_FILE = (
    "# Written by `make run` before it gave Redis a password.\n"
    "JWT_SECRET=an-old-jwt-secret-that-is-long-enough-0123456789\n"
    "ADMIN_USERNAME=admin\n"
    "ADMIN_PASSWORD=an-old-admin-password"
)


def _conf_value(conf: str, directive: str) -> str:
    (value,) = [line.split(" ", 1)[1] for line in conf.splitlines() if line.startswith(directive)]
    return value


@pytest.mark.parametrize(
    ("old_env_file", "maxmemory"),
    [(False, None), (True, "100mb")],
    ids=["first-run", "old-env-file-and-REDIS_MAXMEMORY"],
)
def test_devserver_end_to_end(
    tmp_path: Path, model_dir: Path, old_env_file: bool, maxmemory: str | None
) -> None:
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
    if "PYTHONPATH" in os.environ:  # the package under test, wherever the caller found it
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    if maxmemory is not None:
        env["REDIS_MAXMEMORY"] = maxmemory
    env_file = tmp_path / ".env"
    if old_env_file:  # an existing .env without REDIS_PASSWORD (nor a final newline)
        env_file.write_text(OLD_ENV_FILE)
        env_file.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.devserver"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    redis_dir = tmp_path / "var" / "redis"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        values = dotenv_values(env_file)
        assert len(values["JWT_SECRET"] or "") >= 32
        password = values["ADMIN_PASSWORD"]
        assert password
        redis_password = values["REDIS_PASSWORD"]
        assert redis_password
        assert len(redis_password) >= 32
        if old_env_file:  # the old values are kept, the new one added on a line of its own
            assert env_file.read_text().startswith(OLD_ENV_FILE + "\n")
            assert password == "an-old-admin-password"

        login = httpx.post(
            f"{base}/token",
            data={"grant_type": "password", "username": "admin", "password": password},
        )
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        response = httpx.post(
            f"{base}/predict", json={"data": [5.1, 3.5, 1.4, 0.2]}, headers=headers
        )
        assert response.json()["label"] == "setosa"

        # Its Redis: configuration and ACL private; only the `api` user; memory capped and
        # never evicted; no password on its command line.
        conf = (redis_dir / "redis.conf").read_text()
        for name in ("redis.conf", "users.acl"):
            assert stat.S_IMODE((redis_dir / name).stat().st_mode) == 0o600
        assert (redis_dir / "users.acl").read_text() == redis_acl({REDIS_API_USER: redis_password})
        redis_port = int(_conf_value(conf, "port "))
        with pytest.raises(redis.AuthenticationError):  # the default user is off
            redis.Redis(port=redis_port, retry=Retry(NoBackoff(), 0)).ping()
        api = redis.Redis(port=redis_port, username=REDIS_API_USER, password=redis_password)
        memory = api.info("memory")
        assert memory["maxmemory"] == (100 if maxmemory else 256) * 1024 * 1024
        assert memory["maxmemory_policy"] == "noeviction"
        api.close()
        (redis_pid,) = [
            int(child)
            for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            if Path(f"/proc/{child}/comm").read_text().strip() == "redis-server"
        ]
        cmdline = Path(f"/proc/{redis_pid}/cmdline").read_bytes()
        assert redis_password.encode() not in cmdline
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    text = output.decode()
    assert "stopped redis-server" in text
    assert password not in text
    assert redis_password not in text
    assert f"redis://{REDIS_API_USER}@127.0.0.1:{redis_port}/0" in text
    assert int(text.split("started redis-server (pid ")[1].split(")")[0]) == redis_pid
    assert not Path(f"/proc/{redis_pid}").exists()


def test_ensure_env_value_adds_a_missing_key_only(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("A=1")  # no final newline
    assert ensure_env_value(env_file, "B", "2") is True
    assert ensure_env_value(env_file, "B", "3") is False
    assert ensure_env_value(env_file, "A", "9") is False
    assert env_file.read_text() == "A=1\nB=2\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "256mb"), ("1gb", "1gb"), ("512MB", "512MB"), (" 300mb ", "300mb"), ("1000", "1000")],
)
def test_redis_maxmemory(value: str | None, expected: str) -> None:
    env = {} if value is None else {"REDIS_MAXMEMORY": value}
    assert redis_maxmemory(env) == expected


@pytest.mark.parametrize("value", ["0", "", "-1mb", "256 mb", "256tb", "256mb\nrequirepass x"])
def test_redis_maxmemory_refuses_what_redis_would_not_mean(value: str) -> None:
    with pytest.raises(ValueError, match="REDIS_MAXMEMORY"):
        redis_maxmemory({"REDIS_MAXMEMORY": value})


def test_redis_config_quotes_paths(tmp_path: Path) -> None:
    odd = tmp_path / 'dir with "quotes" and spaces'
    conf = redis_config(port=1, data_dir=odd, acl_file=odd / "users.acl", maxmemory="1mb")
    assert f'dir "{tmp_path}/dir with \\"quotes\\" and spaces"' in conf.splitlines()
