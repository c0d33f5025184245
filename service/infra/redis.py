"""The Redis client and the Lua scripts the service runs on it.

The client is created inside the app lifespan, i.e. in each worker after gunicorn forks, so
no two processes ever share a socket. Short socket timeouts turn an unreachable or stalled
Redis into a fast error (answered 503) instead of a hung request.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError

from service.infra.config import Settings


def _lua(name: str) -> str:
    return resources.files("service.infra").joinpath("lua", name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Scripts:
    """Registered scripts: redis-py reloads one by itself when Redis answers NOSCRIPT
    (e.g. after a restart emptied the script cache)."""

    gate: AsyncScript
    session_start: AsyncScript
    session_rotate: AsyncScript
    session_end: AsyncScript
    create_user: AsyncScript
    update_user: AsyncScript
    rehash: AsyncScript

    @classmethod
    def register(cls, client: Redis) -> Scripts:
        return cls(
            gate=client.register_script(_lua("gate.lua")),
            session_start=client.register_script(_lua("session_start.lua")),
            session_rotate=client.register_script(_lua("session_rotate.lua")),
            session_end=client.register_script(_lua("session_end.lua")),
            create_user=client.register_script(_lua("create_user.lua")),
            update_user=client.register_script(_lua("update_user.lua")),
            rehash=client.register_script(_lua("rehash.lua")),
        )


def create_redis(settings: Settings) -> Redis:
    """A pooled asyncio client with short timeouts and no hidden retries."""
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        max_connections=settings.redis_max_connections,
        health_check_interval=30,
        retry_on_timeout=False,
        # One immediate retry on a broken connection (e.g. pooled sockets that a Redis restart
        # closed) and none on timeouts, so a stalled Redis still fails within the timeout.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        client_name=f"secure-ml-api:{settings.instance_name}",
        # A password in the URL wins; REDIS_PASSWORD[_FILE] fills in when the URL has none.
        password=password,
    )
