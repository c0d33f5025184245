"""The admin command line, run as a real subprocess against the test Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from service.cli import choose_redis
from service.infra.keys import user_key
from tests.support.processes import RedisProcess

PASSWORD = "cli-password-123"


@pytest.fixture
def cli_env(redis_server: RedisProcess, tmp_path: Path) -> dict[str, str]:
    # The package under test, wherever the caller found it (PYTHONPATH), not an installed one.
    return {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ} | {
        "PATH": os.environ["PATH"],
        "REDIS_URL": redis_server.url,
        "JWT_SECRET": "cli-test-secret-" + "s" * 32,
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST_KIB": "1024",
        "ARGON2_PARALLELISM": "1",
        "HOME": str(tmp_path),
    }


def cli(
    env: dict[str, str], cwd: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


async def test_cli_user_lifecycle(cli_env: dict[str, str], tmp_path: Path, redis: Redis) -> None:
    added = cli(
        cli_env, tmp_path, "users", "add", "Bob", "--scopes", "predict", stdin=PASSWORD + "\n"
    )
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    assert cli(cli_env, tmp_path, "users", "add", "bob", stdin=PASSWORD + "\n").returncode == 1
    listed = cli(cli_env, tmp_path, "users", "list")
    assert listed.stdout.strip() == "bob\tpredict\tenabled"
    assert cli(cli_env, tmp_path, "users", "disable", "bob").returncode == 0
    assert "disabled" in cli(cli_env, tmp_path, "users", "list").stdout
    assert cli(cli_env, tmp_path, "users", "enable", "bob").returncode == 0
    version = await redis.hget(user_key("bob"), "token_version")
    assert cli(cli_env, tmp_path, "users", "revoke-tokens", "bob").returncode == 0
    assert await redis.hget(user_key("bob"), "token_version") != version
    changed = cli(cli_env, tmp_path, "users", "set-password", "bob", stdin="another-password-1\n")
    assert changed.returncode == 0, changed.stderr
    assert cli(cli_env, tmp_path, "users", "delete", "bob").returncode == 0
    assert cli(cli_env, tmp_path, "users", "delete", "bob").returncode == 1
    assert cli(cli_env, tmp_path, "users", "list").stdout == ""


def test_cli_keeps_the_last_admin(cli_env: dict[str, str], tmp_path: Path) -> None:
    root = ("users", "add", "root", "--scopes", "predict,admin")
    assert cli(cli_env, tmp_path, *root, stdin=PASSWORD + "\n").returncode == 0
    for command in ("disable", "delete"):
        refused = cli(cli_env, tmp_path, "users", command, "root")
        assert refused.returncode == 1
        assert refused.stderr.strip() == "refused: this is the last enabled admin"


def test_cli_rejects_weak_password(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = cli(cli_env, tmp_path, "users", "add", "carol", stdin="short\n")
    assert result.returncode != 0
    assert "at least" in result.stderr or "12" in result.stderr


def test_cli_has_no_password_argument(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = cli(cli_env, tmp_path, "users", "add", "carol", "--password", PASSWORD)
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr


# Which Redis: REDIS_URL from the environment, else `.env`, else the one `make run` or `make
# cluster` recorded here while it runs; never a silent fall-back.


def _record(root: Path, relative: str, pid: int, **values: str) -> Path:
    record = root / relative
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    (record.parent / "redis.pid").write_text(f"{pid}\n")
    return record


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def test_choose_redis_environment_wins_silently(
    tmp_path: Path, redis_server: RedisProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert redis_server.proc is not None
    _record(tmp_path, "var/redis/client.env", redis_server.proc.pid, REDIS_URL="redis://x:1/0")
    assert choose_redis({"REDIS_URL": "redis://elsewhere:6379/0"}, tmp_path / ".env") == {}
    assert capsys.readouterr().err == ""


def test_choose_redis_env_file_is_named_with_its_password_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text("REDIS_URL=redis://api:s3cret@10.0.0.5:6380/0\n")
    assert choose_redis({}, tmp_path / ".env") == {}
    err = capsys.readouterr().err
    assert err == f"redis: redis://api:***@10.0.0.5:6380/0 (REDIS_URL in {tmp_path / '.env'})\n"


def test_choose_redis_finds_the_running_make_run_redis(
    tmp_path: Path, redis_server: RedisProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    record = _record(tmp_path, "var/redis/client.env", pid, REDIS_URL=redis_server.url)
    assert choose_redis({}, tmp_path / ".env") == {"REDIS_URL": redis_server.url}
    err = capsys.readouterr().err
    assert err.startswith(
        f"redis: {redis_server.url} (make run's redis-server, pid {pid}, recorded in {record}"
    )


def test_choose_redis_takes_make_clusters_password_file(
    tmp_path: Path, redis_server: RedisProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert redis_server.proc is not None
    _record(tmp_path, "var/redis/client.env", _dead_pid(), REDIS_URL="redis://api@h:1/0")
    _record(
        tmp_path,
        "var/cluster/redis/client.env",
        redis_server.proc.pid,
        REDIS_URL=redis_server.url,
        REDIS_PASSWORD_FILE="/somewhere/redis_password",
    )
    assert choose_redis({}, tmp_path / ".env") == {
        "REDIS_URL": redis_server.url,
        "REDIS_PASSWORD_FILE": "/somewhere/redis_password",
    }
    assert "(make cluster's redis-server" in capsys.readouterr().err
    # A password of the caller's own is not overridden.
    chosen = choose_redis({"REDIS_PASSWORD": "mine"}, tmp_path / ".env")
    assert chosen == {"REDIS_URL": redis_server.url}


def test_choose_redis_refuses_a_recorded_redis_that_stopped(tmp_path: Path) -> None:
    record = _record(
        tmp_path, "var/redis/client.env", _dead_pid(), REDIS_URL="redis://api@127.0.0.1:6390/0"
    )
    with pytest.raises(SystemExit) as stopped:
        choose_redis({}, tmp_path / ".env")
    assert str(stopped.value) == (
        f"error: the Redis make run started (redis://api@127.0.0.1:6390/0, recorded in "
        f"{record}) is not running: start `make run` again, or set REDIS_URL to the Redis to use"
    )


def test_choose_redis_says_when_it_uses_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert choose_redis({}, tmp_path / ".env") == {}
    assert capsys.readouterr().err.startswith("redis: redis://127.0.0.1:6379/0 (the default: ")


def test_cli_uses_the_recorded_redis_without_redis_url(
    cli_env: dict[str, str], tmp_path: Path, redis_server: RedisProcess, redis: Redis
) -> None:
    """As after `make run` found 6379 taken: the CLI goes where the server went."""
    assert redis_server.proc is not None
    _record(tmp_path, "var/redis/client.env", redis_server.proc.pid, REDIS_URL=redis_server.url)
    env = {k: v for k, v in cli_env.items() if k != "REDIS_URL"}
    added = cli(env, tmp_path, "users", "add", "dora", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert added.stderr.startswith(f"redis: {redis_server.url} (make run's redis-server")
    listed = cli(cli_env, tmp_path, "users", "list")  # the same Redis, named explicitly
    assert listed.stdout.strip() == "dora\tpredict\tenabled"
    assert listed.stderr == ""
