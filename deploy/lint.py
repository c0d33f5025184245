"""Static checks run by `make lint` after ruff and mypy: security and deployment files.

bandit on the package, pip-audit on the locked dependencies (failing closed in CI when it
cannot audit: see _pip_audit), hadolint on the Dockerfile, `docker compose config -q` on the
Compose file, kubernetes-validate (strict, offline, against a pinned bundled schema) on the
manifests and yamllint on the repository's YAML.
Every check runs even when an earlier one fails, so one run shows every finding; the exit
status is non-zero on any finding.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The oldest Kubernetes minor still commonly run; its schema ships with kubernetes-validate,
# so the check needs no network.
KUBERNETES_VERSION = "1.30.0"


def _run(name: str, command: list[str]) -> bool:
    """Run one check from the repository root; a check passes silently or shows its output."""
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        print(f"FAIL {name}\n{output}")
        return False
    print(f"ok   {name}")
    return True


def _kubernetes() -> bool:
    """Validate every manifest; a kind it has no schema for is a finding, not a warning."""
    manifests = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "deploy" / "k8s").glob("*.yaml")
        if p.name != "kustomization.yaml"
    )
    command = [str(BIN / "kubernetes-validate"), "--strict", "--quiet"]
    command += ["-k", KUBERNETES_VERSION, *manifests]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or output:
        print(f"FAIL kubernetes-validate\n{output}")
        return False
    print(f"ok   kubernetes-validate ({len(manifests)} files, Kubernetes {KUBERNETES_VERSION})")
    return True


def _compose() -> bool:
    docker = shutil.which("docker")
    plugin = docker and subprocess.run([docker, "compose", "version"], capture_output=True)
    if not docker or not plugin or plugin.returncode:
        print("skip docker compose config: no docker CLI with the Compose plugin on PATH")
        return True
    ok = _run("docker compose config", [docker, "compose", "config", "-q"])
    # The Redis topology profiles, as their env files turn them on.
    for env_file in sorted((ROOT / "deploy" / "compose").glob("*.env")):
        name = f"docker compose --env-file {env_file.relative_to(ROOT)} config"
        ok &= _run(name, [docker, "compose", "--env-file", str(env_file), "config", "-q"])
    return ok


# pip-audit asks PyPI's JSON API (the default) or OSV; the audit is complete only when one
# of them answered for every locked dependency.
AUDIT_SERVICES = ("pypi", "osv")
# Set to `allow` to pass when no vulnerability service can be reached: the dependencies are
# then NOT audited. .ci/run sets it only after a probe (`lint.py --probe-audit-service`)
# found no service reachable from the CI machine.
OFFLINE_VARIABLE = "PIP_AUDIT_OFFLINE"
_TRUE = ("1", "true", "yes", "on")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in _TRUE


def _audit_with(service: str) -> tuple[list[dict[str, Any]], str | None]:
    """The dependencies one vulnerability service audited, and why the audit is incomplete
    (None when every locked dependency was audited)."""
    command = [str(BIN / "pip-audit"), "--no-deps", "--disable-pip", "--progress-spinner"]
    command += ["off", "-s", service, "-f", "json", "-r", "requirements.lock"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    try:
        dependencies: list[dict[str, Any]] = json.loads(result.stdout)["dependencies"]
    except (json.JSONDecodeError, KeyError, TypeError):
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return [], f"{service}: no answer ({detail[:200]})"
    audited = [d for d in dependencies if "skip_reason" not in d]
    skipped = [d for d in dependencies if "skip_reason" in d]
    if not dependencies or skipped:
        first = f"; first: {skipped[0]['skip_reason']}" if skipped else ""
        return audited, f"{service}: {len(skipped)} of {len(dependencies)} not audited{first}"
    return audited, None


def _pip_audit() -> bool:
    """Known vulnerabilities in the locked runtime dependencies.

    A vulnerable dependency always fails. An audit that cannot be completed (no vulnerability
    service answers for every dependency) fails in CI (`CI` set to a true value) unless
    PIP_AUDIT_OFFLINE=allow, and only warns locally.
    """
    problems: list[str] = []
    vulnerable: dict[str, str] = {}
    complete = 0
    for service in AUDIT_SERVICES:
        audited, problem = _audit_with(service)
        for dep in audited:
            if dep.get("vulns"):
                ids = [v["id"] for v in dep["vulns"]]
                vulnerable[dep["name"]] = f"  {dep['name']} {dep['version']}: {ids}"
        if problem is None:
            complete = len(audited)
            break
        problems.append(problem)
    if vulnerable:
        print("FAIL pip-audit\n" + "\n".join(vulnerable.values()))
        return False
    if complete:
        print(f"ok   pip-audit ({complete} dependencies, none vulnerable)")
        return True
    why = "\n".join(f"  {problem}" for problem in problems)
    if os.environ.get(OFFLINE_VARIABLE) == "allow":
        print(
            f"WARN pip-audit did NOT run: {OFFLINE_VARIABLE}=allow and no vulnerability service "
            f"answered, so the locked dependencies were NOT checked for known vulnerabilities\n"
            f"{why}"
        )
        return True
    if _in_ci():
        print(
            f"FAIL pip-audit: no vulnerability service answered, and CI fails closed\n{why}\n"
            f"  ({OFFLINE_VARIABLE}=allow passes anyway; .ci/run sets it only when its probe "
            "finds no service reachable)"
        )
        return False
    print(
        f"WARN pip-audit did not run: no vulnerability service answered\n{why}\n"
        "  (passing locally; CI fails closed)"
    )
    return True


def _probe_audit_service(timeout: float = 5.0) -> bool:
    """Whether a vulnerability service pip-audit uses answers for one locked dependency."""
    pin = next(
        line.split(" ")[0]
        for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines()
        if "==" in line and not line.startswith(("#", " "))
    )
    name, version = pin.split("==")
    probes = [
        urllib.request.Request(f"https://pypi.org/pypi/{name}/{version}/json"),
        urllib.request.Request(
            "https://api.osv.dev/v1/query",
            data=json.dumps(
                {"package": {"name": name, "ecosystem": "PyPI"}, "version": version}
            ).encode(),
            headers={"Content-Type": "application/json"},
        ),
    ]
    for request in probes:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (https)  # nosec B310
                body = json.loads(response.read())
        except (OSError, ValueError):
            continue
        if isinstance(body, dict) and ("info" in body or "vulns" in body or body == {}):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--probe-audit-service"]:
        # Exit status 0 when pip-audit could reach a vulnerability service from here.
        return 0 if _probe_audit_service() else 1
    results = [
        _run("bandit", [str(BIN / "bandit"), "-q", "-r", "service"]),
        _pip_audit(),
        _run("hadolint", [str(BIN / "hadolint"), "deploy/Dockerfile"]),
        _compose(),
        _kubernetes(),
        _run("yamllint", [str(BIN / "yamllint"), "--strict", "-c", ".yamllint", "."]),
    ]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
