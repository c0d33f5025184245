"""An instance that dies, stops or reloads never makes clients wait: under steady
authenticated load through nginx, kill -9, SIGTERM and a rolling reload of the instances
cost no request and keep p99 under a second.

The cluster runner restarts a dead instance, as Compose and Kubernetes would; the app is
preloaded in the gunicorn master, so a new instance's workers serve as soon as it listens.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections import Counter

import httpx
import pytest

from tests.deploy.conftest import WORKERS, Cluster
from tests.deploy.load import Load, Outcome, children
from tests.deploy.test_cluster import access_token, new_user

pytestmark = pytest.mark.slow

P99_BUDGET_SECONDS = 1.0


@pytest.fixture
async def load(http: httpx.AsyncClient, cluster: Cluster) -> Load:
    """Load as a fresh predict user (the admin creates it through the load balancer)."""
    user = await new_user(http, cluster)
    return Load(http, cluster.url, await access_token(http, cluster.url, *user))


def _assert_clients_never_noticed(outcomes: list[Outcome]) -> None:
    wrong = Counter(f"HTTP {o.status}: {o.detail}" for o in outcomes if not o.ok)
    assert not wrong, wrong
    assert len(outcomes) > 50  # the load really ran meanwhile
    p99 = statistics.quantiles([o.ended - o.started for o in outcomes], n=100)[98]
    assert p99 <= P99_BUDGET_SECONDS, f"p99 {p99:.3f} s"


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
async def test_an_instance_that_dies_or_stops_costs_clients_nothing(
    cluster: Cluster, load: Load, signum: int
) -> None:
    load.start()
    await asyncio.sleep(1)
    master = cluster.gunicorn_pid(1)
    if signum == signal.SIGKILL:
        for pid in (master, *children(master)):  # the whole instance, workers included
            os.kill(pid, signum)
    else:
        os.kill(master, signum)  # graceful: in-flight requests finish
    # The runner restarts the instance meanwhile; keep the load on until it serves again.
    await asyncio.to_thread(cluster.wait_ready, 1, not_pid=master)
    await asyncio.sleep(1)
    _assert_clients_never_noticed(await load.stop())


async def test_a_rolling_reload_costs_clients_nothing(cluster: Cluster, load: Load) -> None:
    load.start()
    await asyncio.sleep(1)
    for index in range(len(cluster.instances)):
        master = cluster.gunicorn_pid(index)
        old_workers = set(children(master))
        os.kill(master, signal.SIGHUP)
        # Reloaded once every old worker has left and new ones serve.
        deadline = time.monotonic() + 60
        while set(children(master)) & old_workers or len(children(master)) < WORKERS:
            assert time.monotonic() < deadline, f"instance {index + 1} did not reload"
            await asyncio.sleep(0.2)
        await asyncio.to_thread(cluster.wait_ready, index)
    _assert_clients_never_noticed(await load.stop())
