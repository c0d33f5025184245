"""The admin command line, run as a real subprocess against the test Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from service.infra.keys import user_key
from tests.support.processes import RedisProcess

PASSWORD = "cli-password-123"


@pytest.fixture
def cli_env(redis_server: RedisProcess, tmp_path: Path) -> dict[str, str]:
    return {
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
