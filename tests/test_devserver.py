"""`make run`'s server: writes a private .env, starts its own Redis (ACL, memory cap),
serves, stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from dotenv import dotenv_values
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.cli import REDIS_RECORDS
from service.devserver import (
    REDIS_API_USER,
    REDIS_PIDFILE,
    REDIS_RECORD,
    bind_address,
    ensure_env_value,
    port_holder,
    redis_acl,
    redis_config,
    redis_maxmemory,
)
from tests.support.processes import free_port, free_ports, redis_server_binary, stop_process

OLD_ENV_FILE = (
    "# Written by `make run` before it gave Redis a password.\n"
    "JWT_SECRET=an-old-jwt-secret-that-is-long-enough-0123456789\n"
    "ADMIN_USERNAME=admin\n"
    "ADMIN_PASSWORD=an-old-admin-password"
)


class Lines:
    """The output of a process, line by line as it comes, read by a thread."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            self.lines.append(raw.decode(errors="replace"))

    def wait_for(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, f"no {text!r} in {self.text()}"
            assert self._proc.poll() is None or self._thread.is_alive(), self.text()
            time.sleep(0.05)

    def finish(self, timeout: float = 60) -> str:
        self._proc.wait(timeout=timeout)
        self._thread.join(timeout=timeout)
        return self.text()

    def text(self) -> str:
        return "".join(self.lines)


def devserver_env(tmp_path: Path, model_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "BIND": f"127.0.0.1:{port}",
        "RUN_REDIS_PORT": str(free_port()),
        "MODEL_DIR": str(model_dir),
        "WEB_CONCURRENCY": "1",
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST_KIB": "1024",
        "ARGON2_PARALLELISM": "1",
    }
    if "PYTHONPATH" in os.environ:  # the package under test, wherever the caller found it
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env | extra


def start_devserver(cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.devserver"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def run_cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m service` as a newcomer runs it: in the project directory, no REDIS_URL."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=cwd,
        env={k: v for k, v in env.items() if k != "REDIS_URL"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
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
    env = devserver_env(tmp_path, model_dir, port)
    if maxmemory is not None:
        env["REDIS_MAXMEMORY"] = maxmemory
    env_file = tmp_path / ".env"
    if old_env_file:  # an existing .env without REDIS_PASSWORD (nor a final newline)
        env_file.write_text(OLD_ENV_FILE)
        env_file.chmod(0o600)
    proc = start_devserver(tmp_path, env)
    output = Lines(proc)
    base = f"http://127.0.0.1:{port}"
    redis_dir = tmp_path / "var" / "redis"
    try:
        # "serving on" comes once the server serves, not before.
        output.wait_for("serving on")
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        (serving,) = [line for line in output.lines if line.startswith("serving on ")]
        assert serving.startswith(f"serving on {base} - log in as admin")
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

        # Recorded for the CLI (and make cluster), which finds it without REDIS_URL and says so.
        assert int((redis_dir / "redis.pid").read_text()) == redis_pid
        record = dotenv_values(redis_dir / "client.env")
        assert record == {"REDIS_URL": f"redis://{REDIS_API_USER}@127.0.0.1:{redis_port}/0"}
        assert redis_password not in (redis_dir / "client.env").read_text()
        listed = run_cli(tmp_path, env, "users", "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.startswith("admin\t")
        assert listed.stderr.startswith(
            f"redis: redis://{REDIS_API_USER}@127.0.0.1:{redis_port}/0 (make run's "
            f"redis-server, pid {redis_pid}, recorded in var/redis/client.env"
        )
    finally:
        proc.send_signal(signal.SIGINT)
        text = output.finish()
    assert "stopped redis-server" in text
    assert password not in text
    assert redis_password not in text
    assert f"redis://{REDIS_API_USER}@127.0.0.1:{redis_port}/0" in text
    assert int(text.split("started redis-server (pid ")[1].split(")")[0]) == redis_pid
    assert not Path(f"/proc/{redis_pid}").exists()
    # Stopped: the CLI refuses rather than falling back to another Redis.
    stopped = run_cli(tmp_path, env, "users", "list")
    assert stopped.returncode == 1
    assert "is not running: start `make run` again, or set REDIS_URL" in stopped.stderr


def test_the_cli_reads_the_record_devserver_writes() -> None:
    assert dict(REDIS_RECORDS)["make run"] == REDIS_RECORD
    assert REDIS_RECORD.with_name("redis.pid") == REDIS_PIDFILE


def test_invalid_configuration_is_one_line_before_anything_starts(
    tmp_path: Path, model_dir: Path
) -> None:
    env = devserver_env(tmp_path, model_dir, free_port(), RATE_LIMIT_PREDICT="lots")
    done = subprocess.run(
        [sys.executable, "-m", "service.devserver"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    (error,) = done.stderr.splitlines()
    assert error.startswith("invalid configuration: RATE_LIMIT_PREDICT")
    assert "serving on" not in done.stdout
    assert "started redis-server" not in done.stdout
    assert not (tmp_path / "var" / "redis").exists()


def test_no_serving_on_when_the_server_never_serves(tmp_path: Path, model_dir: Path) -> None:
    """Workers that cannot boot (no model): gunicorn gives up, and `make run` never claimed to
    be serving; its Redis is stopped."""
    env = devserver_env(tmp_path, model_dir, free_port(), MODEL_DIR=str(tmp_path / "no-model"))
    proc = start_devserver(tmp_path, env)
    output = Lines(proc)
    try:
        text = output.finish(timeout=120)
    finally:
        stop_process(proc)
    assert proc.returncode != 0
    assert "serving on" not in text
    assert "started redis-server" in text
    assert "gunicorn exited with status" in text
    assert "stopped redis-server" in text


def test_a_busy_port_names_the_master_of_a_preforking_server(tmp_path: Path) -> None:
    """Workers that share their parent's listening socket are counted, not listed."""
    port = free_port()
    code = (
        "import os, socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
        "pids = [os.fork() for _ in range(2)]\n"  # 3 processes: a parent, a child, a grandchild
        "print('ready', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(port)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        seen = b""
        while seen.count(b"ready") < 4:  # each of the 4 processes says so once it exists
            chunk = os.read(proc.stdout.fileno(), 64)
            assert chunk, seen
            seen += chunk
        holder = port_holder("127.0.0.1", port)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the processes it forked
        proc.wait()
    assert holder is not None
    assert holder.startswith(f"pid {proc.pid} (")
    assert holder.endswith(" and 3 child processes")


def test_a_busy_port_is_refused_early_naming_its_holder(tmp_path: Path, model_dir: Path) -> None:
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        env = devserver_env(tmp_path, model_dir, port)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "service.devserver"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert done.returncode == 1
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith(f"127.0.0.1:{port} is already in use by pid {os.getpid()} (")
    assert "BIND=" in message
    assert "serving on" not in done.stdout
    assert "started redis-server" not in done.stdout
    assert not (tmp_path / "var" / "redis" / "redis.conf").exists()
    assert elapsed < 20


def test_a_data_directory_in_use_is_refused(tmp_path: Path, model_dir: Path) -> None:
    """Another `make run` here: its redis-server has var/redis and a pidfile there."""
    data_dir = tmp_path / "var" / "redis"
    data_dir.mkdir(parents=True)
    other_port, port = free_ports(2)
    other = subprocess.Popen(
        [redis_server_binary(), "--port", str(other_port), "--bind", "127.0.0.1",
         "--dir", str(data_dir), "--pidfile", str(data_dir / "redis.pid"), "--save", ""],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not (data_dir / "redis.pid").exists():
            assert time.monotonic() < deadline, "redis-server wrote no pidfile"
            time.sleep(0.05)
        env = devserver_env(tmp_path, model_dir, port)
        done = subprocess.run(
            [sys.executable, "-m", "service.devserver"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert other.poll() is None  # left alone
    finally:
        stop_process(other)
    assert done.returncode == 1
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith(f"{data_dir} is already in use by redis-server pid {other.pid} (")
    assert f"redis-server 127.0.0.1:{other_port})" in message  # its command line
    assert "serving on" not in done.stdout
    assert "started redis-server" not in done.stdout
    with pytest.raises(ConnectionRefusedError):  # nothing took the port it would have served on
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("[::1]:8000", ("::1", 8000)),
        ("unix:/run/app.sock", None),
        ("localhost", None),
    ],
)
def test_bind_address(bind: str, expected: tuple[str, int] | None) -> None:
    assert bind_address(bind) == expected


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
