"""Static checks run by `make lint` after ruff and mypy: security and deployment files.

bandit on the package, pip-audit on the locked dependencies, hadolint on the Dockerfile,
`docker compose config -q` on the Compose file, kubernetes-validate (strict, offline,
against a pinned bundled schema) on the manifests and yamllint on the repository's YAML.
Every check runs even when an earlier one fails, so one run shows every finding; the exit
status is non-zero on any finding.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

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
    return _run("docker compose config", [docker, "compose", "config", "-q"])


def _pip_audit() -> bool:
    """Known vulnerabilities in the locked runtime dependencies. When the vulnerability
    service cannot be reached (no network beyond a package mirror), say so and pass."""
    command = [str(BIN / "pip-audit"), "--no-deps", "--disable-pip", "--progress-spinner"]
    command += ["off", "-f", "json", "-r", "requirements.lock"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        print(f"skip pip-audit: the vulnerability service is unreachable\n{result.stderr[-500:]}")
        return True
    dependencies = report.get("dependencies", [])
    audited = [d for d in dependencies if "skip_reason" not in d]
    vulnerable = [d for d in audited if d.get("vulns")]
    if vulnerable:
        lines = [
            f"  {d['name']} {d['version']}: {[v['id'] for v in d['vulns']]}" for d in vulnerable
        ]
        print("FAIL pip-audit\n" + "\n".join(lines))
        return False
    if not audited:
        print(
            f"skip pip-audit: the vulnerability service is unreachable "
            f"({len(dependencies)} dependencies not audited)"
        )
        return True
    print(f"ok   pip-audit ({len(audited)} dependencies, none vulnerable)")
    return True


def main() -> int:
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
