"""The service on each Redis topology it supports (REDIS_MODE), in-process, configured as
`make cluster` configures its instances: the API's ACL user is enough in every mode (the
cluster client's CLUSTER SLOTS and COMMAND, the sentinels, the scripts' TIME), and a user's
keys live in one slot, on one primary.

Real servers from deploy/redis_topology.py (tests/support/topologies.py); failover under load
is tested over real instances in tests/deploy/test_redis_failover.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.main import create_app
from tests.support.auth import bearer, create_user, login
from tests.support.settings import ADMIN_PASSWORD, ADMIN_USERNAME, USER_PASSWORD
from tests.support.topologies import (
    MODES,
    RedisCluster,
    Topology,
    acl_denials,
    reset_acl_logs,
    settings_for,
    topology_fixture,
)

SAMPLE = {"data": [5.1, 3.5, 1.4, 0.2]}

redis_topology = topology_fixture(*MODES)


@pytest.fixture
async def http(redis_topology: Topology, model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app on `redis_topology`, from a clean ACL log on."""
    reset_acl_logs(redis_topology)
    app: FastAPI = create_app(settings_for(redis_topology, model_dir))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_the_service_works_on_every_topology_as_the_api_user(
    redis_topology: Topology, http: httpx.AsyncClient
) -> None:
    assert (await http.get("/readyz")).status_code == 200
    admin = await login(http, ADMIN_USERNAME, ADMIN_PASSWORD)
    await create_user(http, bearer(admin["access_token"]), "carol")
    tokens = await login(http, "carol", USER_PASSWORD)
    headers = bearer(tokens["access_token"])

    response = await http.post("/predict", json=SAMPLE, headers=headers)
    assert response.status_code == 200, response.text
    refreshed = await http.post("/token/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    headers = bearer(refreshed.json()["access_token"])
    assert (await http.get("/users/me", headers=headers)).status_code == 200
    assert (await http.post("/logout", headers=headers)).status_code == 204
    assert (await http.get("/users/me", headers=headers)).status_code == 401

    assert acl_denials(redis_topology) == []
    if isinstance(redis_topology, RedisCluster):
        # Everything of carol's (record, sessions, counters) shares one hash tag: one primary.
        holders = set()
        for node in redis_topology.servers():
            with redis_topology.client(node) as client:
                if client.info("replication")["role"] == "master" and any(
                    True for _ in client.scan_iter(match="sma:{u:carol}*")
                ):
                    holders.add(node.name)
        assert holders == {redis_topology.primary_for_key("sma:{u:carol}:user").name}
