"""Compose smoke test: the image builds, the stack comes up on a fresh project, and a client
logs in, predicts and logs out through the load balancer.

A unique project name, a free host port and an unused subnet keep it apart from any stack a
developer runs; `down -v` removes its containers, network and volumes (the image and the
build cache stay, so the next run is fast).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_network
from pathlib import Path

import httpx
import pytest

from tests.support.processes import free_ports

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "secure-ml-api:local"
SAMPLE = {"data": [5.1, 3.5, 1.4, 0.2]}


def _engine_problem() -> str | None:
    """Why the stack cannot run here, or None when an engine and Compose answer."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    for command in (["docker", "info"], ["docker", "compose", "version"]):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode:
            detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            return f"`{' '.join(command)}` failed: {detail}"
    return None


# The edge network's /24 comes from here: outside Docker's default address pools
# (172.17.0.0/16-172.31.0.0/16, 192.168.0.0/16), from which the engine gives the `backend`
# network, created first, a whole /16. A /24 of 172.28.0.0/16 collided with it ("Pool
# overlaps") once other projects on the same engine had moved its allocator along.
EDGE_RANGE = IPv4Network("10.228.0.0/16")


def _free_subnet() -> IPv4Network:
    """A /24 of EDGE_RANGE that no Docker network on this engine uses yet."""
    ids = subprocess.run(
        ["docker", "network", "ls", "-q"], capture_output=True, text=True, check=True
    ).stdout.split()
    inspected = subprocess.run(
        ["docker", "network", "inspect", *ids], capture_output=True, text=True, check=True
    ).stdout
    used = [
        ip_network(config["Subnet"])
        for network in json.loads(inspected)
        for config in (network.get("IPAM") or {}).get("Config") or []
        if "Subnet" in config
    ]
    candidates = list(EDGE_RANGE.subnets(new_prefix=24))
    random.shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise RuntimeError(f"no free /24 left in {EDGE_RANGE}")


@dataclass(frozen=True)
class Stack:
    project: str
    url: str
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 120, **env: str) -> str:
        result = subprocess.run(
            ["docker", "compose", "-p", self.project, *args],
            cwd=ROOT,
            env=self.env | env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, f"compose {args}: {result.stdout}\n{result.stderr}"
        return result.stdout


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if (problem := _engine_problem()) is not None:
        pytest.skip(f"no Docker engine: {problem}")
    subnet = _free_subnet()
    (port,) = free_ports(1)
    env = os.environ | {
        "LB_BIND": "127.0.0.1",
        "LB_PORT": str(port),
        "EDGE_SUBNET": str(subnet),
        "LB_IP": str(subnet.network_address + 10),
    }
    stack = Stack(f"smatest{secrets.token_hex(4)}", f"http://127.0.0.1:{port}", env)
    try:
        stack.compose("up", "--build", "--wait", "--wait-timeout", "300", timeout=900)
        yield stack
    except AssertionError:
        print(stack.compose("logs", "--no-color", "--tail", "50"))
        raise
    finally:
        stack.compose("down", "-v", "--remove-orphans", timeout=180)


@pytest.mark.timeout(1200)
def test_login_predict_logout_through_the_load_balancer(stack: Stack) -> None:
    password = stack.compose("exec", "-T", "api", "cat", "/run/secrets/admin_password").strip()
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        response = http.post(
            "/token", data={"grant_type": "password", "username": "admin", "password": password}
        )
        assert response.status_code == 200, response.text
        headers = {"Authorization": f"Bearer {response.json()['access_token']}"}

        response = http.post("/predict", json=SAMPLE, headers=headers)
        assert response.status_code == 200, response.text
        label = subprocess.run(
            ["docker", "image", "inspect", IMAGE, "--format",
             '{{ index .Config.Labels "io.secure-ml-api.model.version" }}'],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert response.json()["model_version"] == label

        assert http.get("/metrics").status_code == 404
        assert http.post("/logout", headers=headers).status_code == 204
        # Round robin: six tries reach every replica twice; none accepts the token.
        assert [http.get("/users/me", headers=headers).status_code for _ in range(6)] == [401] * 6

    upstreams = {
        json.loads(line.split("|", 1)[1])["upstream"]
        for line in stack.compose("logs", "--no-color", "lb").splitlines()
        if '"uri":"/users/me"' in line
    }
    assert len(upstreams) == 3, upstreams


def _lb_upstreams(stack: Stack, marker: str) -> set[str]:
    """The replica addresses nginx's JSON access log names for requests carrying `marker`."""
    return {
        json.loads(line.split("|", 1)[1])["upstream"]
        for line in stack.compose("logs", "--no-color", "lb").splitlines()
        if marker in line and "|" in line
    }


@pytest.mark.timeout(600)
def test_scaling_as_documented_reaches_the_new_replica(stack: Stack) -> None:
    """README's scale command, with 4 replicas: `API_REPLICAS=4 docker compose up -d --wait`
    then `docker compose exec lb nginx -s reload`; nginx then spreads requests over all 4."""
    replicas = "4"
    started = time.monotonic()
    stack.compose("up", "-d", "--wait", "--wait-timeout", "300", timeout=420, API_REPLICAS=replicas)
    scaled = time.monotonic()
    ids = stack.compose("ps", "-q", "api", API_REPLICAS=replicas).split()
    assert len(ids) == int(replicas), ids
    # The documented command, as written (exit status 0), with -T for a terminal-less run.
    stack.compose("exec", "-T", "lb", "nginx", "-s", "reload", API_REPLICAS=replicas)
    reloaded = time.monotonic()

    # Reload is asynchronous (the old workers finish their requests): ask until the access
    # log shows every replica, each request marked so that only this test's lines count.
    seen: set[str] = set()
    rounds = 0
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        while rounds < 60:
            rounds += 1
            marker = f"scale-{secrets.token_hex(4)}"
            for _ in range(2 * int(replicas)):
                assert http.get(f"/healthz?{marker}").status_code == 200
            seen = _lb_upstreams(stack, marker)
            if len(seen) == int(replicas):
                break
            time.sleep(0.5)
    done = time.monotonic()
    print(
        f"scale to {replicas}: up --wait {scaled - started:.1f}s, nginx -s reload "
        f"{reloaded - scaled:.1f}s, all {replicas} replicas in the lb log after "
        f"{done - reloaded:.1f}s ({rounds} rounds)"
    )
    assert len(seen) == int(replicas), seen
