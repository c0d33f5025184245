"""Every Redis the project starts has the same posture: the API's ACL user (the rules of
service/devserver.py, which `make run` and `make cluster` use directly), the default user
off, no password on a command line, AOF, and a memory cap under the container's limit with
noeviction. Compose and Kubernetes generate their ACL file with shell: those scripts are run
here, against temporary paths, and must write exactly what `redis_acl` writes.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with yamllint; no stubs

from service.devserver import (
    REDIS_ACL_RULES,
    REDIS_API_USER,
    REDIS_MAXMEMORY_DEFAULT,
    redis_acl,
    redis_config,
)

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
    """A new user (replication, Sentinel) goes into REDIS_ACL_RULES and into the Compose and
    Kubernetes scripts; this test and the two below then need its rules too."""
    assert set(REDIS_ACL_RULES) == {REDIS_API_USER}


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
    env = {"PATH": os.environ["PATH"], "REDIS_API_ACL": init["environment"]["REDIS_API_ACL"]}
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

    subprocess.run(run, env=env, check=True, capture_output=True, timeout=30)  # a restart
    assert (tmp_path / "secrets/app/redis_password").read_text() == password


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

    url = urlsplit(services["api"]["environment"]["REDIS_URL"])
    assert (url.username, url.password) == (REDIS_API_USER, None)
    assert services["api"]["environment"]["REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"


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
