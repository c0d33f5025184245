"""deploy/lint.py's pip-audit check fails closed in CI: an audit that could not run is a
failure there unless PIP_AUDIT_OFFLINE=allow says so (loudly); locally it only warns.

The vulnerability services are replaced by canned answers: this machine reaches none.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_lint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_lint", ROOT / "deploy" / "lint.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lint = _load_lint()

CLEAN = [{"name": "redis", "version": "8.1.0", "vulns": []}]
VULNERABLE = [{"name": "redis", "version": "1.0", "vulns": [{"id": "PYSEC-0000-1"}]}]
Answer = tuple[list[dict[str, Any]], str | None]


def _services(monkeypatch: pytest.MonkeyPatch, **answers: Answer) -> None:
    monkeypatch.setattr(lint, "_audit_with", lambda service: answers[service])


UNREACHABLE: dict[str, Answer] = {
    "pypi": ([], "pypi: 48 of 48 not audited"),
    "osv": ([], "osv: no answer (ConnectionError)"),
}


@pytest.fixture(autouse=True)
def _no_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PIP_AUDIT_OFFLINE", raising=False)


@pytest.mark.parametrize("ci", ["true", "1", "yes", "TRUE"])
def test_unreachable_service_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    _services(monkeypatch, **UNREACHABLE)
    assert lint._pip_audit() is False
    assert capsys.readouterr().out.startswith("FAIL pip-audit")


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_unreachable_service_warns_outside_ci(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], ci: str | None
) -> None:
    if ci is not None:
        monkeypatch.setenv("CI", ci)
    _services(monkeypatch, **UNREACHABLE)
    assert lint._pip_audit() is True
    assert capsys.readouterr().out.startswith("WARN pip-audit did not run")


def test_escape_hatch_passes_in_ci_and_says_the_audit_did_not_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("PIP_AUDIT_OFFLINE", "allow")
    _services(monkeypatch, **UNREACHABLE)
    assert lint._pip_audit() is True
    assert "pip-audit did NOT run" in capsys.readouterr().out


def test_escape_hatch_needs_its_exact_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("PIP_AUDIT_OFFLINE", "1")
    _services(monkeypatch, **UNREACHABLE)
    assert lint._pip_audit() is False


def test_partial_audit_is_not_an_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    _services(
        monkeypatch,
        pypi=(CLEAN, "pypi: 1 of 2 not audited"),
        osv=([], "osv: no answer (ConnectionError)"),
    )
    assert lint._pip_audit() is False


def test_second_service_completes_the_audit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CI", "true")
    _services(monkeypatch, pypi=([], "pypi: 48 of 48 not audited"), osv=(CLEAN, None))
    assert lint._pip_audit() is True
    assert capsys.readouterr().out.startswith("ok   pip-audit (1 dependencies")


@pytest.mark.parametrize("hatch", [None, "allow"])
def test_a_known_vulnerability_always_fails(
    monkeypatch: pytest.MonkeyPatch, hatch: str | None
) -> None:
    if hatch is not None:
        monkeypatch.setenv("PIP_AUDIT_OFFLINE", hatch)
    _services(monkeypatch, pypi=(VULNERABLE, None), osv=(CLEAN, None))
    assert lint._pip_audit() is False


def test_ci_script_sets_the_escape_hatch_only_when_the_probe_fails() -> None:
    """.ci/run exports PIP_AUDIT_OFFLINE=allow in the `else` branch of the probe, and only
    there, before `make lint`."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    probe = lines.index("if .venv/bin/python deploy/lint.py --probe-audit-service; then")
    otherwise, end = lines.index("else", probe), lines.index("fi", probe)
    hatches = [i for i, line in enumerate(lines) if "PIP_AUDIT_OFFLINE" in line and "=" in line]
    exports = [i for i in hatches if lines[i].startswith("export ")]
    assert exports == [lines.index("export PIP_AUDIT_OFFLINE=allow")]
    assert otherwise < exports[0] < end < lines.index("make lint")


def test_probe_exits_non_zero_when_no_service_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError("unreachable")

    monkeypatch.setattr(lint.urllib.request, "urlopen", refuse)
    assert lint.main(["--probe-audit-service"]) == 1


def test_probe_is_quick_and_answers_with_its_exit_status() -> None:
    """On this machine (a package mirror, no vulnerability service) and anywhere else, the
    probe finishes well within its time budget and answers 0 or 1."""
    result = subprocess.run(
        [lint.sys.executable, str(ROOT / "deploy" / "lint.py"), "--probe-audit-service"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
