"""`make run`: the whole service on one machine, without Docker.

Writes a private `.env` on first run (random JWT secret and admin password), starts a local
redis-server (data under var/redis) unless REDIS_URL is set, then serves with gunicorn on
127.0.0.1:8000. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess  # nosec B404 - starts redis-server and gunicorn, fixed arguments
import sys
import time
from pathlib import Path

from dotenv import dotenv_values

ENV_FILE = Path(".env")
DATA_DIR = Path("var/redis")
GUNICORN_CONF = Path(__file__).resolve().parents[1] / "deploy" / "gunicorn.conf.py"


def ensure_env_file(path: Path = ENV_FILE) -> bool:
    """Create `.env` (mode 600) with fresh secrets if absent; returns whether it was created."""
    if path.exists():
        return False
    content = (
        "# Written by `make run`. Keep private; the process environment overrides it.\n"
        f"JWT_SECRET={secrets.token_urlsafe(48)}\n"
        "ADMIN_USERNAME=admin\n"
        f"ADMIN_PASSWORD={secrets.token_urlsafe(18)}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    return True


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit(
            "redis-server not found: `sudo apt-get install redis-server` (Debian/Ubuntu), "
            "`brew install redis` (macOS), or set REDIS_URL, or use `docker compose up`"
        )
    port = 6379 if _port_free(6379) else _free_port()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(  # noqa: S603  # nosec B603 - fixed arguments, no shell
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(DATA_DIR.resolve()),
            "--appendonly",
            "yes",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        if not _port_free(port):
            return proc, f"redis://127.0.0.1:{port}/0"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.terminate()
    sys.exit("redis-server did not start; see its output above")


def main() -> None:
    if ensure_env_file():
        print(f"wrote {ENV_FILE.resolve()} (mode 600) with a random JWT secret and admin password")
    file_env = {k: v for k, v in dotenv_values(ENV_FILE).items() if v is not None}
    env = {**file_env, **os.environ}
    redis_proc = None
    if "REDIS_URL" not in env:
        redis_proc, env["REDIS_URL"] = start_redis()
        print(
            f"started redis-server (pid {redis_proc.pid}) at {env['REDIS_URL']}, data in var/redis"
        )
    print(
        f"serving on http://{env.get('BIND', '127.0.0.1:8000')} - log in as "
        f"{env.get('ADMIN_USERNAME', '(no admin)')} with ADMIN_PASSWORD from {ENV_FILE.resolve()}"
    )
    server = subprocess.Popen(  # noqa: S603  # nosec B603 - fixed arguments, no shell
        [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "service.main:create_app()"],
        env=env,
    )

    def stop(signum: int, _frame: object) -> None:
        server.send_signal(signal.SIGTERM)

    # Explicit handlers: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        server.wait()
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()
            print("stopped redis-server")
    sys.exit(server.returncode if server.returncode and server.returncode > 0 else 0)


if __name__ == "__main__":
    main()
