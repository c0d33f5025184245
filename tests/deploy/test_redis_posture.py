"""Every Redis the project starts has the same posture: the API's ACL user (the rules of
service/devserver.py, which `make run` and `make cluster` use directly), the default user
off, no password on a command line, AOF, and a memory cap under the container's limit with
noeviction; the Redis Cluster and Sentinel topologies (deploy/redis_topology.py and the
Compose profiles redis-cluster and redis-sentinel) add the users of REDIS_TOPOLOGY_ACL_RULES.
Compose and Kubernetes generate their ACL files with shell: those scripts are run here,
against temporary paths, and must write exactly what `redis_acl` writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with yamllint; no stubs

from service.devserver import (
    REDIS_ACL_RULES,
    REDIS_ADMIN_USER,
    REDIS_API_USER,
    REDIS_MAXMEMORY_DEFAULT,
    REDIS_REPLICA_USER,
    REDIS_SENTINEL_USER,
    REDIS_TOPOLOGY_ACL_RULES,
    redis_acl,
    redis_config,
)
from tests.support.topologies import RedisCluster, RedisSentinel

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
PASSWORD = "Zx9-a-password-for-the-posture-tests"
_UNITS = {
    "": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3,
    "gb": 1024**3,
}  # fmt: skip


def redis_bytes(size: str) -> int:
    """A Redis size (`400mb`: mb is MiB, m is 10^6), as Redis reads it."""
    match = re.fullmatch(r"(\d+)([a-z]*)", size.lower())
    assert match, size
    return int(match[1]) * _UNITS[match[2]]


def k8s_bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|K|M|G)?", quantity)
    assert match, quantity
    factor = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3}
    return int(match[1]) * factor.get(match[2] or "", 1)


def compose_bytes(size: str) -> int:
    """Compose's memory sizes are binary: 512M is 512 MiB."""
    match = re.fullmatch(r"(\d+)([kmg]?)b?", size.lower())
    assert match, size
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match[2]]


def assert_sized_to(maxmemory: str, limit: int) -> None:
    """Most of the limit, with room for the AOF rewrite's fork, buffers, fragmentation."""
    assert 0.5 * limit <= redis_bytes(maxmemory) <= 0.8 * limit, (maxmemory, limit)


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml(path):
            if doc.get("kind") == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def conf_directives(text: str) -> dict[str, str]:
    lines = [line.strip() for line in text.splitlines()]
    pairs = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


def test_the_api_is_the_only_user_everywhere() -> None:
    """A new user goes into REDIS_ACL_RULES and into the Compose and Kubernetes scripts; this
    test and the two below then need its rules too. Users only replicated topologies need
    go into REDIS_TOPOLOGY_ACL_RULES (and the Compose profiles' ACL files)."""
    assert set(REDIS_ACL_RULES) == {REDIS_API_USER}
    assert set(REDIS_TOPOLOGY_ACL_RULES) == {
        REDIS_ADMIN_USER,
        REDIS_REPLICA_USER,
        REDIS_SENTINEL_USER,
    }


def test_topology_users_may_do_only_their_job() -> None:
    """Replication and Sentinel users get no key and no command beyond their own; only the
    operator's `admin` may do everything, and the API is never given it."""
    replica = REDIS_TOPOLOGY_ACL_RULES[REDIS_REPLICA_USER].split()
    assert "-@all" in replica
    assert not any(rule.startswith(("~", "%", "+@")) for rule in replica)
    sentinel = REDIS_TOPOLOGY_ACL_RULES[REDIS_SENTINEL_USER].split()
    assert "-@all" in sentinel
    assert not any(rule.startswith(("~", "%", "+@")) for rule in sentinel)
    assert REDIS_ADMIN_USER not in REDIS_ACL_RULES


# make run and make cluster: the configuration service/devserver.py writes.


def test_local_redis_config(tmp_path: Path) -> None:
    conf = conf_directives(
        redis_config(
            port=6390,
            data_dir=tmp_path,
            acl_file=tmp_path / "users.acl",
            maxmemory=REDIS_MAXMEMORY_DEFAULT,
        )
    )
    assert REDIS_MAXMEMORY_DEFAULT == "256mb"
    assert conf["maxmemory"] == "256mb"
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["aclfile"] == f'"{tmp_path / "users.acl"}"'
    assert conf["bind"] == "127.0.0.1"
    assert conf["appendonly"] == "yes"
    assert "requirepass" not in conf


def test_the_acl_file_holds_no_password() -> None:
    text = redis_acl({REDIS_API_USER: PASSWORD})
    assert PASSWORD not in text
    assert text.splitlines()[0] == "user default off resetpass ~* +@all"


# Docker Compose.


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = load_yaml(ROOT / "docker-compose.yml")
    return doc


def _volume(service: dict[str, Any], name: str) -> str:
    (target,) = [v.split(":")[1] for v in service["volumes"] if v.split(":")[0] == name]
    return str(target)


def test_compose_secrets_init_writes_the_shipped_acl(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    init = compose["services"]["secrets-init"]
    assert init["environment"]["REDIS_API_ACL"] == REDIS_ACL_RULES[REDIS_API_USER]
    for user, variable in TOPOLOGY_ACL_VARIABLES.items():
        assert init["environment"][variable] == REDIS_TOPOLOGY_ACL_RULES[user]
    (script,) = init["command"]
    # Compose reads `$$` as a literal `$`; a lone `$` would be Compose's own interpolation.
    assert not re.search(r"(?<!\$)\$(?!\$)", script.replace("$$", "")), "unescaped $"
    script = script.replace("$$", "$")
    assert _volume(init, "redis-secrets") == "/secrets/redis"
    assert _volume(init, "app-secrets") == "/secrets/app"
    script = script.replace("/secrets/", f"{tmp_path}/secrets/").replace(
        " /data", f" {tmp_path}/data"
    )
    for directory in ("secrets/app", "secrets/redis", "data"):
        (tmp_path / directory).mkdir(parents=True)
    (tmp_path / "secrets/redis/redis.conf").write_text(f"requirepass {PASSWORD}\n")  # older
    env = {"PATH": os.environ["PATH"]} | init["environment"]
    run = ["sh", "-ec", "chown() { :; }\n" + script]  # uids 999/10001 need not exist here

    subprocess.run(run, env=env, check=True, capture_output=True, timeout=30)
    password = (tmp_path / "secrets/app/redis_password").read_text()
    assert len(password) == 48
    redis_dir = tmp_path / "secrets/redis"
    assert (redis_dir / "users.acl").read_text() == redis_acl({REDIS_API_USER: password})
    assert (redis_dir / "api_password").read_text() == password
    assert not (redis_dir / "redis.conf").exists()  # the old file held the password
    for name in ("users.acl", "api_password"):
        assert stat.S_IMODE((redis_dir / name).stat().st_mode) == 0o400
    assert stat.S_IMODE((tmp_path / "secrets/app/redis_password").stat().st_mode) == 0o440

    # The profiles redis-cluster and redis-sentinel: one ACL file each, with the users and
    # rules of deploy/redis_topology.py's topologies, and what replication needs.
    passwords = {REDIS_API_USER: password} | {
        user: (redis_dir / f"{name}_password").read_text()
        for user, name in (
            (REDIS_ADMIN_USER, "admin"),
            (REDIS_REPLICA_USER, "replica"),
            (REDIS_SENTINEL_USER, "sentinel_user"),
        )
    }
    for name, topology in (("cluster", RedisCluster), ("sentinel", RedisSentinel)):
        rules = topology(dir=tmp_path).acl_rules()
        users = {user: passwords[user] for user in rules}
        assert (redis_dir / f"users-{name}.acl").read_text() == redis_acl(users, rules)
    replica_password = passwords[REDIS_REPLICA_USER]
    assert (redis_dir / "replication.conf").read_text() == (
        f"masteruser {REDIS_REPLICA_USER}\nmasterauth {replica_password}\n"
    )
    sentinel_password = (tmp_path / "secrets/app/redis_sentinel_password").read_text()
    assert (redis_dir / "sentinel_password").read_text() == sentinel_password
    assert (redis_dir / "sentinel-auth.conf").read_text().splitlines() == [
        f"sentinel auth-user mymaster {REDIS_SENTINEL_USER}",
        f"sentinel auth-pass mymaster {passwords[REDIS_SENTINEL_USER]}",
        f"requirepass {sentinel_password}",
    ]
    for name in ("users-cluster.acl", "users-sentinel.acl", "replication.conf",
                 "sentinel-auth.conf", "sentinel_password"):  # fmt: skip
        assert stat.S_IMODE((redis_dir / name).stat().st_mode) == 0o400, name
    assert len({*passwords.values(), sentinel_password}) == 5  # one password per user

    subprocess.run(run, env=env, check=True, capture_output=True, timeout=30)  # a restart
    assert (tmp_path / "secrets/app/redis_password").read_text() == password
    assert (tmp_path / "secrets/app/redis_sentinel_password").read_text() == sentinel_password


def test_compose_redis_posture(compose: dict[str, Any]) -> None:
    services = compose["services"]
    redis = services["redis"]
    command: list[str] = redis["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert command[0] == "redis-server"
    assert _volume(redis, "redis-secrets") == "/run/redis"
    assert flags["--aclfile"] == "/run/redis/users.acl"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert flags["--appendonly"] == "yes"
    assert_sized_to(
        flags["--maxmemory"], compose_bytes(redis["deploy"]["resources"]["limits"]["memory"])
    )
    assert not any("pass" in part or "$" in part for part in command)  # no secret in argv

    health = " ".join(redis["healthcheck"]["test"])
    assert f"redis-cli --user {REDIS_API_USER} ping" in health
    assert "/run/redis/api_password" in health

    api = services["api"]["environment"]
    assert api["REDIS_MODE"] == "${REDIS_MODE:-standalone}"
    url = urlsplit(_default(api["REDIS_URL"]))
    assert (url.username, url.password) == (REDIS_API_USER, None)
    assert api["REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"
    assert api["REDIS_SENTINEL_PASSWORD_FILE"] == "/run/secrets/redis_sentinel_password"
    assert redis["deploy"]["replicas"] == "${REDIS_STANDALONE_REPLICAS:-1}"


# Docker Compose, profiles redis-cluster and redis-sentinel.

TOPOLOGY_ACL_VARIABLES = {
    REDIS_ADMIN_USER: "REDIS_ADMIN_ACL",
    REDIS_REPLICA_USER: "REDIS_REPLICA_ACL",
    REDIS_SENTINEL_USER: "REDIS_SENTINEL_ACL",
}
PROFILES = {"redis-cluster": "cluster", "redis-sentinel": "sentinel"}


def _default(value: str) -> str:
    """The default of a Compose `${VARIABLE:-default}`, or the value itself."""
    match = re.fullmatch(r"\$\{[A-Z_]+:-(.*)\}", value)
    return match[1] if match else value


def _env_file(profile: str) -> dict[str, str]:
    path = ROOT / "deploy" / "compose" / f"{profile}.env"
    lines = [line for line in path.read_text().splitlines() if line and line[0] != "#"]
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_compose_profile_env_files(profile: str) -> None:
    env = _env_file(profile)
    assert env["COMPOSE_PROFILES"] == profile
    assert env["REDIS_MODE"] == PROFILES[profile]
    assert env["REDIS_STANDALONE_REPLICAS"] == "0"
    url = urlsplit(env["REDIS_URL"])
    assert (url.username, url.password) == (REDIS_API_USER, None)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_compose_topology_servers_posture(compose: dict[str, Any], profile: str) -> None:
    """Every Redis server of a profile: the profile's ACL file (no password, no default
    user), AOF, the memory cap under its limit with noeviction, non-root, read-only, no
    capabilities, its password files mounted read-only, never a secret on its command line."""
    acl = f"/run/redis/users-{PROFILES[profile]}.acl"
    servers = {
        name: service
        for name, service in compose["services"].items()
        if re.fullmatch(r"(redis-cluster|sentinel-redis)-\d", name)
        and profile in service["profiles"]
    }
    assert len(servers) == (6 if profile == "redis-cluster" else 2)
    for name, service in servers.items():
        command = " ".join(service["command"])
        flags = re.sub(r"\s+", " ", command.replace("\\\n", " "))
        assert f"--aclfile {acl}" in flags, name
        assert "--appendonly yes" in flags.replace('"yes"', "yes"), name
        assert "--maxmemory-policy noeviction" in flags, name
        maxmemory = re.search(r"--maxmemory (\w+)", flags)
        assert maxmemory, name
        limit = compose_bytes(service["deploy"]["resources"]["limits"]["memory"])
        assert_sized_to(maxmemory[1], limit)
        assert "replication.conf" in flags, name  # masteruser/masterauth, from a file
        assert "requirepass" not in flags, name
        assert "masterauth" not in flags, name
        assert service["user"] == "999:999", name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "redis-secrets:/run/redis:ro" in service["volumes"], name
        assert service["healthcheck"]["test"] == compose["services"]["redis"]["healthcheck"]["test"]


def test_compose_cluster_nodes_settings(compose: dict[str, Any]) -> None:
    node = compose["services"]["redis-cluster-0"]["command"]
    flags = dict(zip(node[2::2], node[3::2], strict=True))
    assert flags["--cluster-node-timeout"] == "1000"
    assert flags["--cluster-require-full-coverage"] == "no"
    assert flags["--cluster-enabled"] == "yes"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_compose_profile_resolves_as_documented(profile: str) -> None:
    """`docker compose --env-file deploy/compose/<profile>.env config`: the profile's
    services, the standalone Redis scaled to 0, the API in the profile's REDIS_MODE."""
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run([docker, "compose", "version"], capture_output=True).returncode
    ):
        pytest.skip("no docker CLI with the Compose plugin")
    env_file = ROOT / "deploy" / "compose" / f"{profile}.env"
    result = subprocess.run(
        [docker, "compose", "--env-file", str(env_file), "config", "--format", "json"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "COMPOSE_"))},
    )  # fmt: skip
    services = json.loads(result.stdout)["services"]
    assert services["redis"]["deploy"]["replicas"] == 0
    api = services["api"]["environment"]
    assert api["REDIS_MODE"] == PROFILES[profile]
    assert api["REDIS_URL"] == _env_file(profile)["REDIS_URL"]
    ours = {name for name, service in services.items() if profile in service.get("profiles", [])}
    assert len(ours) == (8 if profile == "redis-cluster" else 6)


# Kubernetes.


def test_k8s_redis_writes_the_shipped_acl(tmp_path: Path) -> None:
    config = k8s_object("ConfigMap", "redis")["data"]
    assert config["api.acl"] == REDIS_ACL_RULES[REDIS_API_USER]
    statefulset = k8s_object("StatefulSet", "redis")
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "redis"
    assert volumes["acl"]["emptyDir"]["medium"] == "Memory"
    assert volumes["secret"]["secret"]["items"] == [
        {"key": "redis_password", "path": "redis_password"}
    ]
    assert (mounts["config"], mounts["acl"], mounts["secret"]) == (
        "/etc/redis",
        "/run/redis",
        "/run/secrets/redis",
    )
    assert conf_directives(config["redis.conf"])["aclfile"] == "/run/redis/users.acl"

    (script,) = container["args"]
    assert container["command"] == ["sh", "-ec"]
    assert script.strip().splitlines()[-1] == "exec redis-server /etc/redis/redis.conf"
    paths = {"/run/secrets/redis/": "secret/", "/etc/redis/": "config/", "/run/redis/": "acl/"}
    for original, local in paths.items():
        (tmp_path / local).mkdir()
        script = script.replace(original, f"{tmp_path}/{local}")
    (tmp_path / "secret/redis_password").write_text(PASSWORD + "\n")  # as --from-file gives
    for key, value in config.items():
        (tmp_path / "config" / key).write_text(value)
    fake = tmp_path / "bin" / "redis-server"  # records how it was started
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:{os.environ['PATH']}"}

    subprocess.run(["sh", "-ec", script], env=env, check=True, capture_output=True, timeout=30)
    acl = tmp_path / "acl/users.acl"
    assert acl.read_text() == redis_acl({REDIS_API_USER: PASSWORD})  # the app strips too
    assert stat.S_IMODE(acl.stat().st_mode) == 0o600
    assert (tmp_path / "argv").read_text() == f"{tmp_path}/config/redis.conf\n"


def test_k8s_redis_posture() -> None:
    conf = conf_directives(k8s_object("ConfigMap", "redis")["data"]["redis.conf"])
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["appendonly"] == "yes"
    assert "requirepass" not in conf
    statefulset = k8s_object("StatefulSet", "redis")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    assert_sized_to(conf["maxmemory"], k8s_bytes(limits["memory"]))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert f"redis-cli --user {REDIS_API_USER} ping" in probe

    url = urlsplit(k8s_object("ConfigMap", "secure-ml-api")["data"]["REDIS_URL"])
    assert (url.username, url.password) == (REDIS_API_USER, None)
    (api,) = k8s_object("Deployment", "secure-ml-api")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in api["env"]}
    assert env["REDIS_PASSWORD_FILE"] == "/run/secrets/app/redis_password"


def test_k8s_redis_configmap_is_deployed() -> None:
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    assert "redis-configmap.yaml" in kustomization["resources"]
