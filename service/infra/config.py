"""The one Settings object: every environment variable of the service, validated at start-up.

A bad value stops the process before it serves anything, with a message naming the variable.
Secrets also come from files (`JWT_SECRET_FILE`, ...) because Docker and Kubernetes mount
secrets as files. Given both ways, the one set in the process environment beats the one in
`.env`; both in the same place is an error.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.rules.accounts import check_password, normalize_username
from service.rules.policies import POLICIES, Policy
from service.rules.rates import Rate, RateField

logger = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32
MIN_DISTINCT_CHARACTERS = 8  # catches "aaaa..." and repeated words; random keys have far more

# Secrets copied from tutorials and documentation: production must never sign with one.
WELL_KNOWN_SECRETS = frozenset(
    {
        "secret",
        "changeme",
        "change-me",
        "change_me",
        "changeit",
        "your-secret-key",
        "your_secret_key",
        "supersecret",
        "super-secret-key",
        "jwt-secret",
        "jwt_secret",
        "mysecretkey",
        "development",
        "09d25e094faa6ca2556c818166b7a9563b93f7099f6f0f4caa6cf63b88e8d3e7",
        "a-string-secret-at-least-256-bits-long",
    }
)


def _read_secret_file(path: Path, variable: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"{variable}: {path} is empty")
    return value


# Each secret variable and the *_FILE variable that may supply it instead.
_FILE_BACKED = (
    "jwt_secret",
    "jwt_previous_secrets",
    "admin_password",
    "redis_password",
    "redis_sentinel_password",
)

CommaList = Annotated[tuple[str, ...], NoDecode]

_S = TypeVar("_S", bound=BaseSettings)


def _with_policy_rates(cls: type[_S]) -> type[_S]:
    """Add one `Rate` field per rate-limit policy (`rate_limit_predict` is read from
    RATE_LIMIT_PREDICT, ...), so that a policy is declared once, in rules/policies.py."""
    fields: Any = {
        policy.setting: (
            Annotated[RateField, NoDecode],
            Field(default=policy.default, description=policy.description),
        )
        for policy in POLICIES
    }
    return create_model(
        cls.__name__, __base__=cls, __module__=cls.__module__, __doc__=cls.__doc__, **fields
    )


@_with_policy_rates
class Settings(BaseSettings):
    """Configuration from the environment (and `.env`; the process environment wins)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        # A validation error must never print the values it was given: they hold secrets.
        hide_input_in_errors=True,
    )

    app_env: Literal["development", "production"] = "development"
    instance_name: str = Field(default_factory=socket.gethostname)

    # Redis: users, revocations and rate-limit counters live here.
    redis_mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = None
    # Sentinel mode: the sentinels (host:port, ...) and the name of the primary they watch.
    redis_sentinels: CommaList = ()
    redis_sentinel_master: str = Field(default="mymaster", min_length=1)
    redis_sentinel_password: SecretStr | None = None
    redis_sentinel_password_file: Path | None = None
    # How many replicas must acknowledge a revocation (logout, ending sessions) before it is
    # answered; unset: 1 in cluster and sentinel modes (they have replicas), 0 standalone.
    redis_revocation_replicas: int | None = Field(default=None, ge=0, le=5)
    redis_revocation_wait_ms: int = Field(default=100, ge=1, le=5000)
    redis_socket_timeout: float = Field(default=0.5, gt=0, le=10)
    redis_max_connections: int = Field(default=64, ge=1)

    # Tokens.
    jwt_secret: SecretStr | None = None
    jwt_secret_file: Path | None = None
    jwt_previous_secrets: SecretStr | None = None
    jwt_previous_secrets_file: Path | None = None
    jwt_algorithm: Literal["HS256", "ES256", "RS256"] = "HS256"
    jwt_private_key_file: Path | None = None
    jwt_previous_public_key_files: CommaList = ()
    jwt_issuer: str = "secure-ml-api"
    jwt_audience: str = "secure-ml-api"
    # Every lifetime goes down to 5 s, for tests and demos.
    access_token_ttl_seconds: int = Field(default=900, ge=5, le=86400)
    # The idle limit: a session not refreshed for this long ends.
    refresh_token_ttl_seconds: int = Field(default=86400, ge=5, le=30 * 86400)
    # No refresh extends a session past this age.
    session_max_age_seconds: int = Field(default=7 * 86400, ge=5, le=365 * 86400)
    # A login beyond this many live sessions ends the user's oldest one.
    max_sessions_per_user: int = Field(default=20, ge=1, le=1000)

    # Users and password hashing: Argon2id with OWASP's recommended 19 MiB, 2 passes, 1 lane;
    # RFC 9106's 64 MiB x 3 x 4 made logins take seconds on a busy 2-core instance.
    admin_username: str | None = None
    admin_password: SecretStr | None = None
    admin_password_file: Path | None = None
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_memory_cost_kib: int = Field(default=19456, ge=8)
    argon2_parallelism: int = Field(default=1, ge=1)
    password_hash_concurrency: int = Field(default=2, ge=1)

    # Rate limits: one RATE_LIMIT_<POLICY> field per policy is added by _with_policy_rates.
    rate_limit_fail_open: bool = False
    trusted_proxies: CommaList = ("127.0.0.1",)

    # Model and input limits.
    model_dir: Path = Path("var/model")
    max_body_bytes: int = Field(default=65536, ge=1024)
    max_batch_size: int = Field(default=256, ge=1, le=10000)
    inline_inference_rows: int = Field(default=64, ge=0)

    # Serving and logs.
    bind: str = "127.0.0.1:8000"
    web_concurrency: int = Field(default=2, ge=1)
    graceful_timeout: int = Field(default=30, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    @field_validator(
        "jwt_previous_public_key_files", "trusted_proxies", "redis_sentinels", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            if entry == "*":
                continue
            try:
                # strict: gunicorn refuses a network with host bits set (10.1.2.3/8) too.
                ipaddress.ip_network(entry, strict=True)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or a CIDR without host bits"
                ) from None
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("expected host:port entries, comma-separated")
        return value

    @field_validator("model_dir")
    @classmethod
    def _absolute_model_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _load_files_and_check_secrets(self) -> Self:
        for name in _FILE_BACKED:
            path: Path | None = getattr(self, f"{name}_file")
            if path is None:
                continue
            if getattr(self, name) is not None:
                # Both given: the one from the process environment beats the one from .env.
                plain_in_env = name.upper() in os.environ
                if plain_in_env == (f"{name.upper()}_FILE" in os.environ):
                    raise ValueError(f"set {name.upper()} or {name.upper()}_FILE, not both")
                if plain_in_env:
                    continue
            secret = SecretStr(_read_secret_file(path, f"{name.upper()}_FILE"))
            object.__setattr__(self, name, secret)
        self._check_signing_keys()
        self._check_admin()
        if self.redis_mode == "sentinel" and not self.redis_sentinels:
            raise ValueError("REDIS_MODE=sentinel needs REDIS_SENTINELS (host:port,...)")
        return self

    def _check_admin(self) -> None:
        """The bootstrap admin follows the rules of every other user."""
        if self.admin_username is None:
            return
        try:
            normalize_username(self.admin_username)
            if self.admin_password is not None:
                check_password(self.admin_username, self.admin_password.get_secret_value())
        except ValueError as exc:
            raise ValueError(f"ADMIN_USERNAME/ADMIN_PASSWORD: {exc}") from None

    def _check_signing_keys(self) -> None:
        if self.jwt_algorithm != "HS256":
            if self.jwt_private_key_file is None:
                raise ValueError(f"JWT_ALGORITHM={self.jwt_algorithm} needs JWT_PRIVATE_KEY_FILE")
            return
        if self.jwt_secret is None:
            raise ValueError(
                "JWT_SECRET (or JWT_SECRET_FILE) is required: generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        for secret in (self.jwt_secret, *self.previous_secrets):
            problem = _secret_problem(secret.get_secret_value())
            if problem is None:
                continue
            if self.app_env == "production":
                raise ValueError(f"APP_ENV=production refuses this JWT secret: {problem}")
            logger.warning("weak JWT secret (%s): acceptable only in development", problem)

    @property
    def previous_secrets(self) -> tuple[SecretStr, ...]:
        """Retired HS256 keys that still verify tokens until those expire."""
        if self.jwt_previous_secrets is None:
            return ()
        raw = self.jwt_previous_secrets.get_secret_value()
        return tuple(SecretStr(part.strip()) for part in raw.split(",") if part.strip())

    @property
    def revocation_replicas(self) -> int:
        if self.redis_revocation_replicas is not None:
            return self.redis_revocation_replicas
        return 0 if self.redis_mode == "standalone" else 1

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [
            (host.strip("[]"), int(port))
            for host, _, port in (entry.rpartition(":") for entry in self.redis_sentinels)
        ]

    def rate(self, policy: Policy) -> Rate:
        """The configured rate of a policy."""
        rate: Rate = getattr(self, policy.setting)
        return rate


def _secret_problem(secret: str) -> str | None:
    if secret.lower() in WELL_KNOWN_SECRETS:
        return "it is a well-known example value"
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return f"it is shorter than {MIN_SECRET_BYTES} bytes"
    if len(set(secret)) < MIN_DISTINCT_CHARACTERS:
        return f"it has fewer than {MIN_DISTINCT_CHARACTERS} distinct characters"
    return None


def load_settings() -> Settings:
    """Settings from the environment, or exit with one line per problem and no values.

    Used wherever a process starts (gunicorn's config, the CLI, `create_app()`), so a bad
    variable is a short message in the logs, never a traceback that might quote a secret.
    """
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise SystemExit(f"invalid configuration: {problems}") from None


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())).upper()
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
