"""Kubernetes: who may reach the API pods, and whose X-Forwarded-For they believe.

The ConfigMap trusts the private ranges pod networks use; that is safe only because the
NetworkPolicy admits nothing but the ingress controller and Prometheus. Both are checked
here, and so is the finding that made the change: behind an ingress, with the old
`TRUSTED_PROXIES=127.0.0.1`, every client looked like the ingress pod, so one client's wrong
passwords answered 429 to another client's correct login.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml  # type: ignore[import-untyped]  # PyYAML comes with yamllint; no stubs
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.main import create_app
from tests.support.processes import RedisProcess
from tests.support.settings import ADMIN_PASSWORD, ADMIN_USERNAME, make_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
INGRESS_NAMESPACES = {"ingress-nginx", "monitoring"}
API_PORT = 8000


def _docs(name: str) -> list[dict[str, Any]]:
    text = (K8S / name).read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _configmap() -> dict[str, str]:
    (configmap,) = _docs("api-configmap.yaml")
    data: dict[str, str] = configmap["data"]
    return data


def _api_pod_labels() -> dict[str, str]:
    (deployment,) = _docs("api-deployment.yaml")
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are checked here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _trusted_proxies() -> list[str]:
    return [part.strip() for part in _configmap()["TRUSTED_PROXIES"].split(",")]


def test_trusted_proxies_are_valid_private_networks_covering_pod_ranges() -> None:
    networks = [ipaddress.ip_network(entry, strict=True) for entry in _trusted_proxies()]
    # Private addresses only: a public range would let internet clients choose theirs.
    assert all(network.is_private for network in networks), networks
    for private in map(ipaddress.ip_network, PRIVATE_RANGES):
        assert any(
            private.version == network.version and private.subnet_of(network)  # type: ignore[arg-type]
            for network in networks
        ), private


def test_api_pods_admit_only_the_ingress_controller_and_prometheus() -> None:
    policies = [d for d in _docs("networkpolicy.yaml") if d["kind"] == "NetworkPolicy"]
    # Policies add up: every one that selects the API pods counts, so there must be one.
    (policy,) = [p for p in policies if _selects(p, _api_pod_labels())]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    namespaces = set()
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every source"
        assert rule["ports"] == [{"protocol": "TCP", "port": API_PORT}]
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector"}, peer  # no ipBlock, no podSelector
            assert set(peer["namespaceSelector"]) == {"matchLabels"}
            labels = peer["namespaceSelector"]["matchLabels"]
            assert set(labels) == {"kubernetes.io/metadata.name"}, labels
            namespaces.add(labels["kubernetes.io/metadata.name"])
    assert namespaces == INGRESS_NAMESPACES


def test_redis_admits_only_the_api_pods() -> None:
    policies = [d for d in _docs("networkpolicy.yaml") if d["kind"] == "NetworkPolicy"]
    (statefulset,) = _docs("redis-statefulset.yaml")
    redis_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    (policy,) = [p for p in policies if _selects(p, redis_labels)]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": _api_pod_labels()}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl (kustomize) here")
def test_the_documented_kustomize_patch_changes_namespaces_and_proxies(tmp_path: Path) -> None:
    """The commented example in kustomization.yaml, applied in an overlay, builds and
    changes what it says it changes."""
    text = (K8S / "kustomization.yaml").read_text(encoding="utf-8")
    lines = text[text.index("# patches:") :].splitlines()
    example = [line[2:] for line in itertools.takewhile(lambda ln: ln.startswith("#"), lines)]
    base = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources:\n  - {base}\n" + "\n".join(example) + "\n", encoding="utf-8"
    )
    built = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    (policy,) = [d for d in docs if d["metadata"]["name"] == "api-http-only"]
    peers = policy["spec"]["ingress"][0]["from"]
    names = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers}
    assert names == {"traefik", "observability"}
    (configmap,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "secure-ml-api"
    ]
    assert configmap["data"]["TRUSTED_PROXIES"] == "10.244.0.0/16"


# The finding, in-process: uvicorn's own proxy-header handling in front of the app, as the
# gunicorn workers run it, and a peer address inside the cluster's pod network.

INGRESS_POD = "10.42.0.7"
ATTACKER, VICTIM = "203.0.113.66", "198.51.100.23"
WRONG_PASSWORD = "not-the-admin-password"


@pytest.fixture(scope="module")
def limits_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis-ingress")).start()
    yield server
    server.stop()


async def _logins(
    trusted_hosts: str, redis_server: RedisProcess, model_dir: Path
) -> tuple[list[int], int, int]:
    """The attacker's five wrong passwords, the victim's correct one, the attacker's sixth
    try, all through the ingress pod: the status codes."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    configmap = _configmap()
    settings = make_settings(
        redis_server.url,
        model_dir,
        rate_limit_login=configmap["RATE_LIMIT_LOGIN"],
        rate_limit_login_ip="30/minute",  # the default; the ConfigMap does not change it
    )
    app = create_app(settings)
    proxied = ProxyHeadersMiddleware(app, trusted_hosts=trusted_hosts)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=proxied, client=(INGRESS_POD, 41234))  # type: ignore[arg-type]

    async def login(forwarded_for: str, password: str) -> int:
        response = await http.post(
            "/token",
            data={"grant_type": "password", "username": ADMIN_USERNAME, "password": password},
            headers={"X-Forwarded-For": forwarded_for},
        )
        return response.status_code

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
    ):
        # The attacker even forges the victim's address in front of its own (the ingress
        # appends the address it saw): only the right-most untrusted entry counts.
        attacker = [await login(f"{VICTIM}, {ATTACKER}", WRONG_PASSWORD) for _ in range(5)]
        victim = await login(VICTIM, ADMIN_PASSWORD)
        sixth = await login(ATTACKER, WRONG_PASSWORD)
    return attacker, victim, sixth


async def test_one_clients_wrong_passwords_do_not_lock_out_another_behind_the_ingress(
    limits_redis: RedisProcess, model_dir: Path
) -> None:
    assert _configmap()["RATE_LIMIT_LOGIN"] == "5/minute"
    trusted = _configmap()["TRUSTED_PROXIES"]
    attacker, victim, sixth = await _logins(trusted, limits_redis, model_dir)
    assert attacker == [400] * 5
    assert victim == 200
    assert sixth == 429  # the attacker's own limit still holds


async def test_the_finding_with_the_old_setting(
    limits_redis: RedisProcess, model_dir: Path
) -> None:
    """The control: trusting only 127.0.0.1, everyone is the ingress pod, one bucket."""
    attacker, victim, _ = await _logins("127.0.0.1", limits_redis, model_dir)
    assert attacker == [400] * 5
    assert victim == 429
