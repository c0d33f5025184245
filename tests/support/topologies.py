"""Real Redis topologies for tests: deploy/redis_topology.py's standalone server, Redis Cluster
(3 primaries, 3 replicas) and Sentinel set (primary, replica, 3 sentinels), with the project's
ACL users, in a temporary directory. Each starts in about 2 s; every process is stopped by its
PID, whatever happens.

    redis_topology = topology_fixture("cluster", "sentinel")    # in a test module

A test that kills or restarts nodes must leave the topology healthy (`wait_healthy`) for the
next test of the module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.infra.config import Settings
from tests.support.processes import REPO_ROOT
from tests.support.settings import make_settings

# deploy/'s scripts import each other by name, as they do when run (`python deploy/...`).
if str(REPO_ROOT / "deploy") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "deploy"))

from redis_topology import (
    MODES,
    TOPOLOGIES,
    RedisCluster,
    RedisSentinel,
    Topology,
    attach,
)

__all__ = [
    "MODES",
    "RedisCluster",
    "RedisSentinel",
    "Topology",
    "acl_denials",
    "attach",
    "reset_acl_logs",
    "settings_for",
    "topology_fixture",
]


def topology_fixture(*modes: str, maxmemory: str = "64mb") -> Callable[..., Any]:
    """A module-scoped fixture, parametrized by `modes`, yielding a running topology."""

    @pytest.fixture(scope="module", params=modes)
    def redis_topology(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Topology]:
        mode: str = request.param
        topology = TOPOLOGIES[mode](
            dir=tmp_path_factory.mktemp(f"redis-{mode}"), maxmemory=maxmemory
        )
        with topology:
            yield topology

    return redis_topology


def settings_for(topology: Topology, model_dir: Path, **overrides: Any) -> Settings:
    """The app's settings (`make_settings`) for `topology`: what `make cluster` hands its
    instances, REDIS_MODE, REDIS_URL, the sentinels, the password files."""
    values: dict[str, Any] = {
        name.lower(): Path(value) if name.endswith("_FILE") else value
        for name, value in topology.app_env().items()
    }
    return make_settings(values.pop("redis_url"), model_dir, **(values | overrides))


def acl_denials(topology: Topology) -> list[dict[str, Any]]:
    """Every entry of every live server's ACL LOG: what the ACL refused to anyone (a denial
    that a client swallows still shows here)."""
    entries: list[dict[str, Any]] = []
    for node in topology.servers():
        if node.alive():
            with topology.client(node) as client:
                entries += [entry | {"node": node.name} for entry in client.acl_log()]
    return entries


def reset_acl_logs(topology: Topology) -> None:
    for node in topology.servers():
        if node.alive():
            with topology.client(node) as client:
                client.acl_log_reset()
