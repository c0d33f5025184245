"""The Redis client, for each topology REDIS_MODE names, and the Lua scripts the service runs.

- `standalone`: one Redis (or a managed primary) at REDIS_URL.
- `cluster`: Redis Cluster; REDIS_URL names any node, redis-py's RedisCluster finds the
  others and follows slot moves and failovers. Every script's keys share a hash tag (see
  `keys.py`), so each runs within one slot.
- `sentinel`: redis-py's Sentinel client asks REDIS_SENTINELS for the primary of
  REDIS_SENTINEL_MASTER and follows it through failovers; REDIS_URL supplies only the
  credentials and the database number.

The client is created inside the app lifespan, i.e. in each worker after gunicorn forks, so
no two processes ever share a socket. Short socket timeouts and a single immediate retry
turn an unreachable, stalled or failing-over Redis into a fast error (answered 503) instead
of a hung request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from service.infra.config import Settings
from service.infra.metrics import UNREPLICATED_WRITES

logger = logging.getLogger(__name__)

RedisClient = Redis | RedisCluster


def _lua(name: str) -> str:
    return resources.files("service.infra").joinpath("lua", name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Scripts:
    """Registered scripts: redis-py reloads one by itself when Redis answers NOSCRIPT
    (after a restart emptied the script cache, or on a freshly promoted cluster primary)."""

    gate: AsyncScript
    gate_refund: AsyncScript
    session_start: AsyncScript
    session_rotate: AsyncScript
    session_end: AsyncScript
    create_user: AsyncScript
    update_user: AsyncScript
    delete_user: AsyncScript
    rehash: AsyncScript

    @classmethod
    def register(cls, client: RedisClient) -> Scripts:
        return cls(
            gate=client.register_script(_lua("gate.lua")),
            gate_refund=client.register_script(_lua("gate_refund.lua")),
            session_start=client.register_script(_lua("session_start.lua")),
            session_rotate=client.register_script(_lua("session_rotate.lua")),
            session_end=client.register_script(_lua("session_end.lua")),
            create_user=client.register_script(_lua("create_user.lua")),
            update_user=client.register_script(_lua("update_user.lua")),
            delete_user=client.register_script(_lua("delete_user.lua")),
            rehash=client.register_script(_lua("rehash.lua")),
        )


def _common(settings: Settings) -> dict[str, Any]:
    """What every client of every mode gets: short timeouts, one immediate retry on a broken
    connection and none on timeouts, a bounded pool, a name in CLIENT LIST."""
    return {
        "decode_responses": True,
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_socket_timeout,
        "max_connections": settings.redis_max_connections,
        "client_name": f"secure-ml-api:{settings.instance_name}",
    }


def _password(settings: Settings) -> str | None:
    return settings.redis_password.get_secret_value() if settings.redis_password else None


def create_redis(settings: Settings) -> RedisClient:
    """The client for REDIS_MODE (see the module docstring)."""
    if settings.redis_mode == "cluster":
        # A password in the URL wins; REDIS_PASSWORD[_FILE] fills in when the URL has none.
        cluster_password = urlsplit(settings.redis_url).password
        return RedisCluster.from_url(
            settings.redis_url,
            **_common(settings),
            # Cluster level: a failed call refreshes the slot map and is tried once more (0
            # would leave pipelines dialling a dead primary; the default 10 hangs seconds).
            retry=Retry(NoBackoff(), 1),
            password=unquote(cluster_password) if cluster_password else _password(settings),
        )
    if settings.redis_mode == "sentinel":
        return _sentinel_primary(settings)
    return Redis.from_url(
        settings.redis_url,
        **_common(settings),
        health_check_interval=30,
        retry_on_timeout=False,
        # One immediate retry on a broken connection (pooled sockets that a Redis restart
        # closed) and none on timeouts, so a stalled Redis still fails within the timeout.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        # A password in the URL wins; REDIS_PASSWORD[_FILE] fills in when the URL has none.
        password=_password(settings),
    )


def _sentinel_primary(settings: Settings) -> Redis:
    url = urlsplit(settings.redis_url)
    password = unquote(url.password) if url.password else _password(settings)
    database = int(url.path.strip("/") or 0)
    timeouts = {
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_socket_timeout,
    }
    sentinel_password = settings.redis_sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        settings.sentinel_addresses,
        # Given explicitly: the sentinels' own connections inherit none of the kwargs below.
        sentinel_kwargs=timeouts
        | (
            {"password": sentinel_password.get_secret_value()}
            if sentinel_password is not None
            else {}
        ),
    )
    primary: Redis = sentinel.master_for(
        settings.redis_sentinel_master,
        **_common(settings),
        username=unquote(url.username) if url.username else None,
        password=password,
        db=database,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return primary


async def close_redis(client: RedisClient) -> None:
    """Close the client and, in sentinel mode, its connections to the sentinels."""
    await client.aclose()
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


async def memory_ratio(client: RedisClient) -> float:
    """Used memory / maxmemory of the fullest primary (0 when none has a maxmemory)."""
    if isinstance(client, RedisCluster):
        per_node = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        infos = list(per_node.values())
    else:
        infos = [await client.info("memory")]
    ratios = [
        int(info.get("used_memory", 0)) / int(info["maxmemory"])
        for info in infos
        if int(info.get("maxmemory", 0))
    ]
    return max(ratios, default=0.0)


class Replication:
    """Runs the writes that revoke access so that `replicas` replicas acknowledge them
    before they are answered (Redis replication is asynchronous: a primary that dies right
    after a write can take it along, and a lost revocation is a stolen token that works).

    The script and `WAIT replicas timeout` go down one connection in one pipeline: WAIT
    answers for the writes of its own connection only. A WAIT that times out (no replica
    reachable, e.g. during a failover) is logged and counted, not an error: the revocation
    stands on the primary and reaches the replicas when they catch up.
    """

    def __init__(self, client: RedisClient, replicas: int, timeout_ms: int) -> None:
        self._client = client
        self._replicas = replicas
        self._timeout_ms = timeout_ms

    async def run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        if not self._replicas:
            return await script(keys=keys, args=args)
        for attempt in (1, 2):
            result, acknowledged = await self._pipelined(script, keys, args)
            if isinstance(result, NoScriptError) and attempt == 1:
                # A restarted or newly promoted primary: load the script, once.
                script.sha = await self._client.script_load(script.script)
                continue
            if isinstance(result, Exception):
                raise result
            if isinstance(acknowledged, Exception) or acknowledged < self._replicas:
                UNREPLICATED_WRITES.inc()
                logger.warning(
                    "a revocation is on the primary only: no replica acknowledged it in %d ms",
                    self._timeout_ms,
                )
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pipelined(
        self, script: AsyncScript, keys: list[str], args: list[Any]
    ) -> tuple[Any, Any]:
        # Scripts run through EVALSHA itself: cluster pipelines refuse redis-py's Script.
        evalsha = ("EVALSHA", script.sha, len(keys), *keys, *args)
        wait = ("WAIT", self._replicas, self._timeout_ms)
        if isinstance(self._client, RedisCluster):
            node = self._client.get_node_from_key(keys[0])
            async with self._client.pipeline() as cluster_pipe:
                cluster_pipe.execute_command(*evalsha)
                cluster_pipe.execute_command(*wait, target_nodes=node)
                result, acknowledged = await cluster_pipe.execute(raise_on_error=False)
        else:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.execute_command(*evalsha)
                pipe.execute_command(*wait)
                result, acknowledged = await pipe.execute(raise_on_error=False)
        return result, acknowledged
