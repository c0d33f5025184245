"""The Redis ACL the project ships, on a real redis-server: the API's user may do what the
service needs, on its own keys, and nothing dangerous; the service works against it.

The server loads the ACL and configuration that `make run` and `make cluster` write
(service/devserver.py: `redis_acl`, `redis_config`); Compose and Kubernetes generate the same
file from the same rules (tests/deploy/test_redis_posture.py). One line is appended for the
test alone: an `auditor` user that may only read the ACL log (so that a denial the service
swallows, as redis-py does with some failures on connect, still shows) and ask ACL DRYRUN
whether the ACL allows a command without running it.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.devserver import REDIS_API_USER, redis_acl, redis_config, write_private
from service.main import create_app
from tests.support.processes import free_port, redis_server_binary, stop_process
from tests.support.settings import ADMIN_PASSWORD, ADMIN_USERNAME, make_settings

SAMPLE = {"data": [5.1, 3.5, 1.4, 0.2]}


def _client(**kwargs: Any) -> redis.Redis:
    """A client that reports a refusal at once (redis-py retries failed connections,
    refused logins included, with backoff by default)."""
    return redis.Redis(retry=Retry(NoBackoff(), 0), **kwargs)


@dataclass
class AclRedis:
    port: int
    password: str
    auditor_password: str
    proc: subprocess.Popen[bytes]

    @property
    def api_url(self) -> str:
        return f"redis://{REDIS_API_USER}@127.0.0.1:{self.port}/0"

    def api(self, **kwargs: Any) -> redis.Redis:
        return _client(
            port=self.port,
            username=REDIS_API_USER,
            password=self.password,
            decode_responses=True,
            **kwargs,
        )

    def acl_log(self) -> list[dict[str, Any]]:
        auditor = _client(port=self.port, username="auditor", password=self.auditor_password)
        try:
            entries: list[dict[str, Any]] = auditor.acl_log()
        finally:
            auditor.close()
        return entries

    def reset_acl_log(self) -> None:
        auditor = _client(port=self.port, username="auditor", password=self.auditor_password)
        auditor.acl_log_reset()
        auditor.close()

    def dry_run(self, *command: str) -> str:
        """What the ACL says of the API user running `command`: "OK" or why not."""
        auditor = _client(
            port=self.port,
            username="auditor",
            password=self.auditor_password,
            decode_responses=True,
        )
        try:
            return str(auditor.execute_command("ACL", "DRYRUN", REDIS_API_USER, *command))  # type: ignore[no-untyped-call]
        finally:
            auditor.close()


def start_acl_redis(data_dir: Path, maxmemory: str, port: int | None = None) -> AclRedis:
    """redis-server with the shipped ACL and configuration, on a free port (a restart: the
    same `data_dir` and `port`; the passwords are new)."""
    port = free_port() if port is None else port
    password, auditor = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
    acl_file, conf = data_dir / "users.acl", data_dir / "redis.conf"
    shipped = redis_acl({REDIS_API_USER: password})
    write_private(acl_file, shipped + f"user auditor on >{auditor} -@all +acl|log +acl|dryrun\n")
    write_private(
        conf, redis_config(port=port, data_dir=data_dir, acl_file=acl_file, maxmemory=maxmemory)
    )
    proc = subprocess.Popen(
        [redis_server_binary(), str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"-NOAUTH"):
                    return AclRedis(port, password, auditor, proc)
        except OSError:
            pass
        time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError("redis-server did not answer in time")


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    server = start_acl_redis(tmp_path_factory.mktemp("redis-acl"), maxmemory="64mb")
    yield server
    stop_process(server.proc)


@pytest.fixture
def api(acl_redis: AclRedis) -> Iterator[redis.Redis]:
    client = acl_redis.api(client_name="secure-ml-api:test")
    yield client
    client.close()


def test_the_default_user_can_do_nothing(acl_redis: AclRedis) -> None:
    with socket.create_connection(("127.0.0.1", acl_redis.port), timeout=2) as sock:
        sock.sendall(b"PING\r\nGET sma:x\r\n")
        time.sleep(0.1)
        replies = sock.recv(4096).decode()
    assert replies.count("-NOAUTH") == 2, replies
    for password in ("", "nopass", acl_redis.password):
        with pytest.raises(redis.AuthenticationError):
            _client(port=acl_redis.port, username="default", password=password).ping()


def test_a_wrong_password_is_refused(acl_redis: AclRedis) -> None:
    with pytest.raises(redis.AuthenticationError):
        _client(port=acl_redis.port, username=REDIS_API_USER, password="wrong").ping()
    with pytest.raises(redis.AuthenticationError):  # no user named: the default one
        _client(port=acl_redis.port, password=acl_redis.password).ping()


# Every command the service uses, on hash-tagged keys of the shapes it writes.
USER, SESSION = "sma:{u:alice}:user", "sma:{u:alice}:s:0123456789abcdef"
SESSIONS, LIMIT = "sma:{u:alice}:sessions", "sma:{c:10.0.0.0/64}:rl:login-ip"
SCRIPT = """
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'a', '1', 'b', '2')
redis.call('HGET', KEYS[1], 'a'); redis.call('HMGET', KEYS[1], 'a', 'b')
redis.call('HGETALL', KEYS[1]); redis.call('HDEL', KEYS[1], 'b'); redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[2], 'x'); redis.call('GET', KEYS[2])
redis.call('PEXPIRE', KEYS[2], 60000); redis.call('PEXPIREAT', KEYS[2], t[1] * 1000 + 60000)
redis.call('PTTL', KEYS[2])
redis.call('ZADD', KEYS[3], 1, 'a', 2, 'b'); redis.call('ZSCORE', KEYS[3], 'a')
redis.call('ZRANGE', KEYS[3], 0, -1); redis.call('ZRANGEBYSCORE', KEYS[3], 0, 10)
redis.call('ZCARD', KEYS[3]); redis.call('ZREM', KEYS[3], 'a')
redis.call('ZREMRANGEBYSCORE', KEYS[3], 0, 1)
redis.call('SADD', KEYS[4], 'a', 'b'); redis.call('SREM', KEYS[4], 'b')
redis.call('UNLINK', KEYS[2]); redis.call('DEL', KEYS[3])
return redis.call('SMEMBERS', KEYS[4])
"""


def test_the_api_user_may_run_what_the_service_needs(acl_redis: AclRedis, api: redis.Redis) -> None:
    acl_redis.reset_acl_log()
    assert api.ping() is True
    assert "used_memory" in api.info("memory")
    assert api.client_setname("secure-ml-api:again") is True
    assert api.time()
    keys = [USER, SESSION, LIMIT, SESSIONS]

    assert api.eval(SCRIPT, len(keys), *keys) == ["a"]
    sha = api.script_load(SCRIPT)
    assert api.evalsha(sha, len(keys), *keys) == ["a"]
    assert api.script_exists(sha) == [True]

    for transaction in (True, False):
        with api.pipeline(transaction=transaction) as pipe:
            pipe.hset(USER, mapping={"token_version": "1"})
            pipe.hgetall(USER)
            pipe.exists(USER)
            pipe.set(SESSION, "1", px=60000)
            pipe.get(SESSION)
            pipe.pttl(SESSION)
            pipe.pexpire(SESSION, 1000)
            pipe.zadd(LIMIT, {"r1": 1})
            pipe.zcard(LIMIT)
            pipe.zscore(LIMIT, "r1")
            pipe.zrem(LIMIT, "r1")
            pipe.smembers(SESSIONS)
            pipe.srem(SESSIONS, "a")
            pipe.unlink(SESSION)
            pipe.delete(USER)
            results = pipe.execute()
        assert len(results) == 15

    api.sadd("sma:users", "alice")
    assert api.smembers("sma:users") == {"alice"}
    _, found = api.scan(0, match="sma:*", count=1000)
    assert "sma:users" in found
    assert api.delete("sma:users") == 1
    assert acl_redis.acl_log() == []


@pytest.mark.parametrize(
    "command",
    [
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "GET", "maxmemory"),
        ("CONFIG", "SET", "maxmemory", "0"),
        ("CONFIG", "REWRITE"),
        ("KEYS", "*"),
        ("DEBUG", "SLEEP", "0"),
        ("SHUTDOWN", "NOSAVE"),
        ("ACL", "LIST"),
        ("ACL", "SETUSER", "api", "~*"),
        ("ACL", "DELUSER", "auditor"),
        ("ACL", "LOG"),
        ("ACL", "SAVE"),
        ("MONITOR",),
        ("REPLICAOF", "127.0.0.1", "1"),
        ("SLAVEOF", "NO", "ONE"),
        ("MIGRATE", "127.0.0.1", "1", "sma:x", "0", "1000"),
        ("SAVE",),
        ("BGSAVE",),
        ("BGREWRITEAOF",),
        ("CLIENT", "LIST"),
        ("CLIENT", "KILL", "TYPE", "normal"),
        ("CLIENT", "PAUSE", "1000"),
        ("SWAPDB", "0", "1"),
        ("MODULE", "LIST"),
        ("FAILOVER",),
        ("SLOWLOG", "GET"),
        ("LATENCY", "DOCTOR"),
        ("SORT", "sma:x"),
        ("RESTORE", "sma:x", "0", "x"),
        ("PUBLISH", "channel", "x"),
        ("SUBSCRIBE", "channel"),
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_the_api_user_may_not_run_dangerous_commands(
    acl_redis: AclRedis, command: tuple[str, ...]
) -> None:
    assert "no permissions" in acl_redis.dry_run(*command)
    client = acl_redis.api()  # one connection each: a command that slipped through may
    try:  # leave its connection in a mode (MONITOR, SUBSCRIBE)
        # Refused for real too (DEBUG is also disabled by Redis's own default).
        with pytest.raises(redis.ResponseError, match=r"no permissions|DEBUG command not allowed"):
            client.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        client.close()


@pytest.mark.parametrize(
    "command",
    [
        ("GET", "foo"),
        ("SET", "other:x", "1"),
        ("SET", "sma", "1"),
        ("SET", "xsma:x", "1"),
        ("SET", "SMA:x", "1"),
        ("HSET", "user:alice", "a", "1"),
        ("DEL", "foo"),
        ("EXISTS", "sma:x", "foo"),
        ("COPY", "sma:x", "foo"),
        ("RENAME", "sma:x", "foo"),
        ("EVAL", "return redis.call('GET', KEYS[1])", "1", "foo"),
        # A key the script does not declare is checked when the script touches it.
        ("EVAL", "return redis.call('SET', 'foo', '1')", "0"),
        ("EVAL", "return redis.call('GET', 'foo')", "1", "sma:x"),
    ],
    ids=lambda command: " ".join(command[:2])[:40],
)
def test_the_api_user_may_not_touch_keys_outside_its_prefix(
    api: redis.Redis, command: tuple[str, ...]
) -> None:
    api.set("sma:x", "1")
    # From a script: "The user executing the script can't access at least one of the keys".
    with pytest.raises(redis.ResponseError, match=r"no permissions|can't access"):
        api.execute_command(*command)  # type: ignore[no-untyped-call]


def test_a_full_redis_refuses_writes_but_still_deletes(tmp_path: Path) -> None:
    """noeviction: nothing is evicted to make room, writes fail, deletes (logout, revoking a
    session, a user's removal) still work, in a script too."""
    server = start_acl_redis(tmp_path, maxmemory="2mb")
    api = server.api()
    try:
        keys = [f"sma:{{u:user{n}}}:user" for n in range(400)]
        written: list[str] = []
        try:
            for key in keys:
                api.set(key, "x" * 10_000)
                written.append(key)
        except redis.exceptions.OutOfMemoryError:
            pass
        else:
            pytest.fail("4 MB were written under maxmemory 2mb")
        assert len(written) > 10
        assert api.exists(*written) == len(written)  # nothing was evicted
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            api.eval("return redis.call('SET', KEYS[1], 'x')", 1, "sma:{u:new}:user")
        assert api.eval("return redis.call('DEL', KEYS[1])", 1, written[0]) == 1
        assert api.unlink(*written[1:]) == len(written) - 1
        assert api.set(keys[0], "x") is True  # room again
        assert api.info("memory")["maxmemory_policy"] == "noeviction"
    finally:
        api.close()
        stop_process(server.proc)


def test_a_restart_replays_every_write_of_the_aof(tmp_path: Path) -> None:
    """Redis replays the AOF as the `default` user and re-checks each MULTI/EXEC block (a
    script's writes are one) against it: a `default` without permissions would make a
    restart drop them silently."""
    server = start_acl_redis(tmp_path, maxmemory="64mb")
    api = server.api()
    try:
        api.eval(SCRIPT, 4, USER, SESSION, LIMIT, SESSIONS)
        with api.pipeline(transaction=True) as pipe:
            pipe.set(SESSION, "1")
            pipe.zadd(LIMIT, {"r": 1})
            pipe.execute()
        before = {key: api.dump(key) for key in (USER, SESSION, LIMIT, SESSIONS)}
        api.close()
        stop_process(server.proc)  # SIGTERM: a clean shutdown, the AOF synced

        server = start_acl_redis(tmp_path, maxmemory="64mb", port=server.port)
        api = server.api()
        assert {key: api.dump(key) for key in before} == before
    finally:
        api.close()
        stop_process(server.proc)


@pytest.fixture
async def acl_app(acl_redis: AclRedis, model_dir: Path) -> AsyncIterator[FastAPI]:
    acl_redis.reset_acl_log()  # from here on, every denial is the service's
    settings = make_settings(acl_redis.api_url, model_dir, redis_password=acl_redis.password)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def test_the_service_works_as_the_api_user(acl_redis: AclRedis, acl_app: FastAPI) -> None:
    """Login, predict, read the user, log out, through the public HTTP API, as the service
    really connects (REDIS_URL naming the user, the password apart): no ACL denial."""
    transport = httpx.ASGITransport(app=acl_app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/readyz")).status_code == 200
        login = await http.post(
            "/token",
            data={"grant_type": "password", "username": ADMIN_USERNAME, "password": ADMIN_PASSWORD},
        )
        assert login.status_code == 200, login.text
        tokens = login.json()
        assert tokens["refresh_token"]
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}

        response = await http.post("/predict", json=SAMPLE, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["label"] == "setosa"
        response = await http.get("/users/me", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["username"] == ADMIN_USERNAME

        response = await http.post("/logout", headers=headers)
        assert response.status_code == 204, response.text
        assert (await http.get("/users/me", headers=headers)).status_code == 401
    assert acl_redis.acl_log() == []
