"""Settings: secrets from files, production refusals, rate syntax, proxies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.infra.config import Settings
from service.rules.policies import PREDICT
from service.rules.rates import Rate

GOOD_SECRET = "k" * 16 + "-random-enough-" + "q" * 16


def build(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60/minute", Rate(60, 60)),
        ("5/second", Rate(5, 1)),
        ("1000/hour", Rate(1000, 3600)),
        ("10/day", Rate(10, 86400)),
        (" 7/Minutes ", Rate(7, 60)),
        ("100000/day", Rate(100_000, 86400)),
    ],
)
def test_rate_syntax(text: str, expected: Rate) -> None:
    assert Rate.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "60",
        "0/minute",
        "-1/minute",
        "60/fortnight",
        "x/minute",
        "5 / minute",
        "\u0665/minute",
        "1/\u017fecond",
        "1/M\u0130NUTE",
        "100001/second",
        "99999999999999999999/second",
    ],
)
def test_bad_rate_stops_start_up(text: str) -> None:
    with pytest.raises(ValidationError, match="N/second"):
        build(jwt_secret=GOOD_SECRET, rate_limit_predict=text)


def test_secret_is_required() -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        build()


@pytest.mark.parametrize("secret", ["short", "secret", "changeme" * 5])
def test_production_refuses_weak_secrets(secret: str) -> None:
    with pytest.raises(ValidationError, match="APP_ENV=production refuses"):
        build(app_env="production", jwt_secret=secret)


def test_production_refuses_the_fastapi_docs_example_key() -> None:
    example = "09d25e094faa6ca2556c818166b7a9563b93f7099f6f0f4caa6cf63b88e8d3e7"
    with pytest.raises(ValidationError, match="well-known"):
        build(app_env="production", jwt_secret=example)


def test_development_tolerates_a_short_secret() -> None:
    assert build(jwt_secret="short").app_env == "development"


def test_secret_files(tmp_path: Path) -> None:
    (tmp_path / "jwt").write_text(GOOD_SECRET + "\n")
    (tmp_path / "admin").write_text("admin-password-long\n")
    settings = build(
        app_env="production",
        jwt_secret_file=tmp_path / "jwt",
        admin_password_file=tmp_path / "admin",
    )
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == GOOD_SECRET
    assert settings.admin_password is not None
    assert settings.admin_password.get_secret_value() == "admin-password-long"
    assert GOOD_SECRET not in repr(settings)


def test_missing_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET_FILE: cannot read"):
        build(jwt_secret_file=tmp_path / "absent")


def test_environment_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"JWT_SECRET={GOOD_SECRET}\nRATE_LIMIT_PREDICT=5/minute\n")
    monkeypatch.setenv("RATE_LIMIT_PREDICT", "7/minute")
    settings = Settings(_env_file=env_file)
    assert settings.rate(PREDICT) == Rate(7, 60)
    assert os.environ["RATE_LIMIT_PREDICT"] == "7/minute"


def test_trusted_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.1, 172.18.0.0/16")
    monkeypatch.setenv("JWT_SECRET", GOOD_SECRET)
    settings = Settings(_env_file=None)
    assert settings.trusted_proxies == ("10.0.0.1", "172.18.0.0/16")
    with pytest.raises(ValidationError, match="not an IP address"):
        build(jwt_secret=GOOD_SECRET, trusted_proxies="not-an-ip")


def test_relative_model_dir_is_made_absolute() -> None:
    assert build(jwt_secret=GOOD_SECRET, model_dir="var/model").model_dir.is_absolute()


def test_a_secret_file_in_the_environment_beats_the_plain_value_in_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"JWT_SECRET={GOOD_SECRET}\n")
    secret_file = tmp_path / "jwt"
    secret_file.write_text("from-the-file-" + "f" * 32)
    monkeypatch.setenv("JWT_SECRET_FILE", str(secret_file))
    settings = Settings(_env_file=env_file)
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == "from-the-file-" + "f" * 32


def test_a_plain_value_in_the_environment_beats_a_file_in_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"JWT_SECRET_FILE={tmp_path / 'absent'}\n")
    monkeypatch.setenv("JWT_SECRET", GOOD_SECRET)
    settings = Settings(_env_file=env_file)
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == GOOD_SECRET


def test_both_in_the_same_place_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "jwt").write_text(GOOD_SECRET)
    with pytest.raises(ValidationError, match="not both"):
        build(jwt_secret=GOOD_SECRET, jwt_secret_file=tmp_path / "jwt")


def test_configuration_errors_are_one_line_without_values() -> None:
    env = {
        "PATH": os.environ["PATH"],
        "APP_ENV": "production",
        "JWT_SECRET": "hunter2hunter2",
        "RATE_LIMIT_LOGIN": "fast",
    }
    result = subprocess.run(
        [sys.executable, "-c", "from service.infra.config import load_settings; load_settings()"],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("invalid configuration: RATE_LIMIT_LOGIN: invalid rate")
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("username", "password", "message"),
    [
        ("admin", "short", "12 to 1024 characters"),
        ("a b", "long-enough-password", "username must be"),
        ("administrator1", "ADMINISTRATOR1", "must not be the username"),
    ],
)
def test_bootstrap_admin_follows_the_user_rules(username: str, password: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        build(jwt_secret=GOOD_SECRET, admin_username=username, admin_password=password)


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    """An operator reads the README's table, not this module: a setting missing there does
    not exist for them. A `*_FILE` variant may share its secret's row (`/ _FILE`)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## Performance")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    missing = []
    for name in Settings.model_fields:
        variable = name.upper()
        secret = variable.removesuffix("_FILE")
        if not any(f"`{variable}`" in row or f"`{secret}` / `_FILE`" in row for row in rows):
            missing.append(variable)
    assert missing == []
