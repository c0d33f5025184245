"""Auto-pipelining against a real redis-server: concurrent calls share round trips, each
keeps its own reply or error, and a failed round trip fails fast for every caller."""

from __future__ import annotations

import asyncio
import signal
import tempfile
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.infra.autopipeline import AutoPipeline, _packed
from service.infra.redis import create_redis
from tests.support.processes import RedisProcess
from tests.support.settings import make_settings

# Adds ARGV[1] to the counter KEYS[1]; INCRBY fails on a key that holds no integer.
ADD = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def _reads(redis: Redis) -> int:
    """How many times the server has read from a client socket (INFO stats)."""
    return int((await redis.info("stats"))["total_reads_processed"])


async def test_concurrent_calls_share_round_trips_and_keep_their_own_replies(
    redis: Redis,
) -> None:
    pipeline = AutoPipeline(redis)
    script = redis.register_script(ADD)
    await script(keys=["warm"], args=[0])
    before = await _reads(redis)

    replies = await asyncio.gather(*(pipeline.run(script, [f"n{i % 4}"], [1]) for i in range(64)))

    reads = await _reads(redis) - before - 1  # the INFO call itself
    assert sorted(replies) == sorted(count for _ in range(4) for count in range(1, 17))
    assert [await redis.get(f"n{i}") for i in range(4)] == ["16"] * 4
    assert reads < 16, f"64 calls took {reads} server reads"


async def test_a_call_alone_is_sent_without_waiting(redis: Redis) -> None:
    pipeline = AutoPipeline(redis)
    script = redis.register_script(ADD)
    assert await asyncio.wait_for(pipeline.run(script, ["solo"], [5]), timeout=1) == 5


async def test_a_script_error_answers_only_its_caller(redis: Redis) -> None:
    pipeline = AutoPipeline(redis)
    script = redis.register_script(ADD)
    await redis.set("text", "not a number")

    results = await asyncio.gather(
        pipeline.run(script, ["a"], [1]),
        pipeline.run(script, ["text"], [1]),
        pipeline.run(script, ["b"], [2]),
        return_exceptions=True,
    )

    assert results[0] == 1
    assert isinstance(results[1], ResponseError)
    assert results[2] == 2


async def test_an_emptied_script_cache_is_refilled(redis: Redis) -> None:
    """After a Redis restart or a failover the primary no longer knows the script."""
    pipeline = AutoPipeline(redis)
    script = redis.register_script(ADD)
    await pipeline.run(script, ["c"], [1])
    await redis.script_flush()

    replies = await asyncio.gather(*(pipeline.run(script, ["c"], [1]) for _ in range(3)))

    assert sorted(replies) == [2, 3, 4]


async def test_connections_a_redis_restart_closed_are_replaced(
    tmp_path: Path, model_dir: Path
) -> None:
    """With the service's own client (one immediate retry of a broken connection)."""
    server = RedisProcess(tmp_path, appendonly=True).start()
    client = create_redis(make_settings(server.url, model_dir))
    script = client.register_script(ADD)
    pipeline = AutoPipeline(client)
    try:
        # Several pooled connections, each of them closed by the restart.
        await asyncio.gather(*(pipeline.run(script, ["f"], [1]) for _ in range(8)))
        await asyncio.gather(*(client.incr("g") for _ in range(8)))
        server.stop()
        server.start()

        replies = await asyncio.gather(*(pipeline.run(script, ["f"], [1]) for _ in range(8)))

        assert sorted(replies) == list(range(9, 17))
    finally:
        await client.aclose()
        server.stop()


async def test_a_cancelled_caller_leaves_the_others_their_replies(redis: Redis) -> None:
    pipeline = AutoPipeline(redis)
    script = redis.register_script(ADD)
    first = asyncio.ensure_future(pipeline.run(script, ["d"], [1]))
    second = asyncio.ensure_future(pipeline.run(script, ["d"], [10]))
    await asyncio.sleep(0)
    first.cancel()

    assert await second in (10, 11)  # the cancelled call may or may not have been sent
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_an_unreachable_redis_fails_every_caller_fast() -> None:
    server = RedisProcess(Path(tempfile.mkdtemp())).start()
    client = Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    script = client.register_script(ADD)
    pipeline = AutoPipeline(client)
    try:
        await pipeline.run(script, ["e"], [1])
        server.stop()

        results = await asyncio.wait_for(
            asyncio.gather(
                *(pipeline.run(script, ["e"], [1]) for _ in range(8)), return_exceptions=True
            ),
            timeout=5,
        )

        assert all(isinstance(result, RedisError) for result in results), results
        assert any(isinstance(result, RedisConnectionError) for result in results)
        # Each caller raises an exception object of its own.
        assert len({id(result) for result in results}) == len(results)
    finally:
        await client.aclose()
        server.stop()


@pytest.mark.parametrize(
    ("keys", "args"),
    [
        (["u:{alice}", "s:{alice}:1", "r:predict:{alice}"], ["1", "1", "v1", 100, 60000, "0"]),
        (["u:{zoë}"], ["ünïcode", b"\x00raw\r\n", 0, -7, ""]),
        ([], []),
    ],
)
def test_calls_are_encoded_as_redis_py_encodes_them(
    keys: list[str], args: list[str | bytes | int]
) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    expected = b"".join(Connection().pack_command("EVALSHA", sha, len(keys), *keys, *args))
    assert _packed(sha, keys, args) == expected


@pytest.mark.parametrize("value", [True, 1.5, None])
def test_an_argument_redis_py_would_not_send_is_refused(value: object) -> None:
    with pytest.raises(DataError):
        _packed("0" * 40, ["k"], [value])


async def test_a_stalled_redis_fails_every_caller_within_the_socket_timeout(
    tmp_path: Path, model_dir: Path
) -> None:
    """A Redis that stops answering mid-connection (paused, or a peer that died without
    closing): the batch fails with a timeout instead of hanging, and the connection it left
    half-read is not handed to the next batch."""
    server = RedisProcess(tmp_path).start()
    assert server.proc is not None
    client = create_redis(make_settings(server.url, model_dir, redis_socket_timeout=0.3))
    script = client.register_script(ADD)
    pipeline = AutoPipeline(client)
    try:
        await pipeline.run(script, ["s"], [1])
        server.proc.send_signal(signal.SIGSTOP)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(pipeline.run(script, ["s"], [1]) for _ in range(8)),
                    return_exceptions=True,
                ),
                timeout=5,
            )
            elapsed = loop.time() - started
        finally:
            server.proc.send_signal(signal.SIGCONT)

        assert all(isinstance(result, RedisTimeoutError) for result in results), results
        assert elapsed < 2
        # Redis ran the stalled calls once it resumed; their replies went with the dropped
        # connection, so the next caller reads its own reply, not one of theirs.
        assert await pipeline.run(script, ["s"], [100]) == 109
    finally:
        await client.aclose()
        server.stop()
