"""The README's Quickstart and Authentication shell blocks, run as written against a live
`make run` (service/devserver.py in a temporary project directory, on free ports).

The convention: every ```sh block of those two sections runs, in order, in one bash with
`set -euo pipefail`, from the project directory, with BASE set to the stack's address (the
blocks say `BASE=${BASE:-http://127.0.0.1:8000}`). A block right after the HTML comment
`<!-- readme-test: skip (why) -->` is not run: it starts something long-running (`make run`)
or installs things. `curl` is wrapped with --fail-with-body, so an HTTP error fails the
block, and the `read` prompts get their lines from standard input.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import free_ports
from tests.test_devserver import Lines

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTIONS = ("Quickstart", "Authentication")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b(?P<why>[^>]*)-->")
FENCE = re.compile(r"^```(?P<lang>\S*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
# What the `read -rsp` prompts of the Authentication section are answered with.
PROMPTS = ("bob's first passphrase", "bob's second passphrase")


@dataclass(frozen=True)
class Block:
    section: str
    line: int
    body: str
    skip: str | None  # the reason, when marked


def section_text(markdown: str, title: str) -> tuple[int, str]:
    """The text of `## title` up to the next `## ` heading, and the line it starts on."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match is not None, f"README has no section {title!r}"
    return markdown.count("\n", 0, match.start()) + 1, match.group(1)


def sh_blocks(markdown: str) -> list[Block]:
    blocks = []
    for title in SECTIONS:
        first_line, text = section_text(markdown, title)
        for fence in FENCE.finditer(text):
            if fence.group("lang") != "sh":
                continue
            before = text[: fence.start()].rstrip().splitlines()
            marker = SKIP.fullmatch(before[-1].strip()) if before else None
            blocks.append(
                Block(
                    section=title,
                    line=first_line + text.count("\n", 0, fence.start()) + 1,
                    body=fence.group("body"),
                    skip=marker.group("why").strip(" ()") if marker else None,
                )
            )
    return blocks


def script(blocks: list[Block]) -> str:
    parts = [
        "set -euo pipefail",
        'curl() { command curl --fail-with-body --show-error "$@"; }',
    ]
    for block in blocks:
        if block.skip is None:
            parts.append(f"echo '### README.md:{block.line} ({block.section})' >&2")
            parts.append(block.body)
    return "\n".join(parts) + "\n"


def test_the_blocks_and_their_markers() -> None:
    blocks = sh_blocks(README.read_text(encoding="utf-8"))
    assert {b.section for b in blocks} == set(SECTIONS)
    skipped = [b for b in blocks if b.skip is not None]
    assert all(b.skip for b in skipped), "a skip marker says why"
    assert all("make run" in b.body for b in skipped)
    ran = "".join(b.body for b in blocks if b.skip is None)
    for call in ("grant_type=password", "grant_type=refresh_token", "/revoke", "/logout",
                 "/users/me/sessions", "users set-password"):  # fmt: skip
        assert call in ran, call
    # Every variable a block reads is set by an earlier block (or by the test: BASE).
    assert "$PW" not in ran.split("read -rsp", 1)[0]


@dataclass(frozen=True)
class Project:
    dir: Path
    base: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Project]:
    """A project directory as after `make install`, served by `make run`'s devserver."""
    directory = tmp_path_factory.mktemp("readme-project")
    (directory / ".venv").symlink_to(sys.prefix)  # README blocks call .venv/bin/python
    port, redis_port = free_ports(2)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(directory),
        "LANG": "C.UTF-8",
        # The package under test, whichever venv runs it.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    server_env = env | {
        "BIND": f"127.0.0.1:{port}",
        "RUN_REDIS_PORT": str(redis_port),
        "MODEL_DIR": str(model_dir),
        "WEB_CONCURRENCY": "1",
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST_KIB": "1024",
        "ARGON2_PARALLELISM": "1",
        "LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.devserver"],
        cwd=directory,
        env=server_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = Lines(proc)
    try:
        output.wait_for("serving on", timeout=120)
        yield Project(directory, f"http://127.0.0.1:{port}", env)
    finally:
        proc.send_signal(signal.SIGINT)
        print(output.finish(timeout=60)[-3000:])


def test_quickstart_and_authentication_blocks_run_as_written(project: Project) -> None:
    blocks = sh_blocks(README.read_text(encoding="utf-8"))
    done = subprocess.run(
        ["bash", "-c", script(blocks)],
        cwd=project.dir,
        env=project.env | {"BASE": project.base},
        input="".join(f"{answer}\n" for answer in PROMPTS),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = done.stdout
    assert '"label":"setosa"' in out  # /predict
    assert '"predictions":[' in out  # /predict/batch
    assert '"username":"alice"' in out  # POST /users
    assert "bob\tpredict\tenabled" in out  # users list, before `users disable bob`
    assert '"current":true' in out  # GET /users/me/sessions
    assert out.rstrip().endswith("{}")  # POST /revoke
    # The CLI found make run's Redis by its record, and said so.
    assert "(make run's redis-server, pid " in done.stderr
    for answer in PROMPTS:  # passwords read with `read -s` never show
        assert answer not in out + done.stderr
