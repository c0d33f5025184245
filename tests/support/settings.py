"""Settings and credentials for apps and servers under test, and a model to serve."""

from __future__ import annotations

import atexit
import functools
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from service.infra.config import Settings
from service.ml.train import train
from service.rules.policies import POLICIES

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin-password-for-tests"
USER_PASSWORD = "user-password-for-tests"

# Cheap Argon2: tests log in thousands of times.
CHEAP_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_cost_kib": 1024, "argon2_parallelism": 1}
# Every rate-limit policy far above what a test sends, unless the test lowers one.
GENEROUS_RATES = {policy.setting: "1000/minute" for policy in POLICIES}


def make_settings(redis_url: str, model_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: never read the developer's .env; cheap Argon2 parameters."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "model_dir": model_dir,
        "jwt_secret": secrets.token_urlsafe(48),
        "admin_username": ADMIN_USERNAME,
        "admin_password": ADMIN_PASSWORD,
        **CHEAP_ARGON2,
        **GENEROUS_RATES,
        "log_format": "text",
        # Generous for a busy CI machine; the 0.5 s production default is tested over gunicorn.
        "redis_socket_timeout": 2.0,
    } | overrides
    return Settings(_env_file=None, **values)


def server_env(**overrides: str) -> dict[str, str]:
    """The environment of a real server under test: `make_settings` as variables."""
    return {
        **{name.upper(): str(value) for name, value in CHEAP_ARGON2.items()},
        "ADMIN_USERNAME": ADMIN_USERNAME,
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "WEB_CONCURRENCY": "2",
        "LOG_FORMAT": "json",
    } | overrides


@functools.cache
def trained_model_dir() -> Path:
    """The Iris model, trained once per test process (training is deterministic)."""
    out = Path(tempfile.mkdtemp(prefix="secure-ml-api-model-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    train(out)
    return out


def es256_key_file(path: Path) -> Path:
    """A new P-256 private key in PEM at `path`, for `JWT_PRIVATE_KEY_FILE` in ES256 mode."""
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path
