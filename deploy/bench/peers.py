"""Peers: other model servers measured in the same run, serving the same model and row
(`make bench PEERS=mlserver`, i.e. `--peers mlserver`).

MLServer (Seldon) is the strongest peer measured so far: its scikit-learn runtime with
adaptive batching (up to 64 requests or 5 ms per batch), 2 parallel inference workers (the
service runs 2 gunicorn workers), no authentication (it has none), its metrics server on a
free port as by default, gRPC (which it cannot turn off) on another. It loads the very
pickle the service serves (var/model/model.joblib).

It needs its own environment: MLServer 1.7.1 pins FastAPI < 0.116 and Starlette 0.46, which
the service's lock has left behind. `ensure_mlserver` creates var/peers/mlserver once
(python -m venv + pip from PyPI, about a minute) and reuses it while the pins below stay
the same. Pins:
- mlserver and mlserver-sklearn 1.7.1 (the latest);
- uvloop < 0.22 (0.21.0): with uvloop 0.22+ every parallel worker dies with "There is no
  current event loop" and the model never loads (SeldonIO/MLServer#2286, unreleased fix);
- scikit-learn at the version in requirements.lock, the one that wrote the pickle.

MLServer is started in its own session on 127.0.0.1 and stopped by its PID (SIGTERM; it
stops its workers); a worker that outlives it is killed by its own PID.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from errors import ToolError
from processes import ROOT, Deployment, children, free_ports, wait_http

PEERS = ("mlserver",)
MLSERVER_VENV = ROOT / "var" / "peers" / "mlserver"
MODEL_NAME = "iris-rf"  # the V2 model name the service uses too: same path, same body
MLSERVER_VERSION = "1.7.1"
UVLOOP_PIN = "uvloop==0.21.0"  # < 0.22, see the module docstring
STAMP = ".bench-pins"


def locked_version(package: str, lock: Path = ROOT / "requirements.lock") -> str:
    """The version `lock` pins for `package` (a `name==version` line)."""
    match = re.search(rf"^{re.escape(package)}==([^\s\\;]+)", lock.read_text(), re.MULTILINE)
    if match is None:
        raise ToolError(f"{package} is not pinned in {lock}")
    return match.group(1)


def mlserver_pins() -> list[str]:
    return [
        f"mlserver=={MLSERVER_VERSION}",
        f"mlserver-sklearn=={MLSERVER_VERSION}",
        UVLOOP_PIN,
        f"scikit-learn=={locked_version('scikit-learn')}",
    ]


class PeerUnavailable(ToolError):
    """A peer could not be installed (e.g. PyPI unreachable): bench.py says so and goes on
    without it, unlike every other ToolError."""


def ensure_mlserver(venv: Path = MLSERVER_VENV) -> Path:
    """MLServer's own venv with the pins installed (created once, reused); its `mlserver`.
    Raises PeerUnavailable when the install fails."""
    pins = mlserver_pins()
    binary = venv / "bin" / "mlserver"
    stamp = venv / STAMP
    if binary.exists() and stamp.exists() and stamp.read_text().split() == pins:
        return binary
    print(f"installing MLServer into {venv} ({', '.join(pins)}); about a minute", flush=True)
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", *pins],
    ]  # fmt: skip
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=1200, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PeerUnavailable(f"{' '.join(step[:4])} failed: {exc}") from None
        if done.returncode != 0:
            raise PeerUnavailable(
                f"{' '.join(step[:4])} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
            )
    stamp.write_text("\n".join(pins) + "\n")
    return binary


def mlserver_settings(
    http_port: int, grpc_port: int, metrics_port: int, model_file: Path, workers: int = 2
) -> tuple[dict[str, Any], dict[str, Any]]:
    """settings.json (the server) and model-settings.json (the model) for `mlserver start`."""
    server = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": workers,
        "load_models_at_startup": True,
    }
    model = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "max_batch_size": 64,
        "max_batch_time": 0.005,
        "parameters": {"uri": str(model_file.resolve()), "version": "v1"},
    }
    return server, model


def write_mlserver_settings(
    folder: Path, http_port: int, grpc_port: int, metrics_port: int, model_file: Path,
    workers: int = 2,
) -> None:  # fmt: skip
    server, model = mlserver_settings(http_port, grpc_port, metrics_port, model_file, workers)
    (folder / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(server, indent=2) + "\n")
    (folder / MODEL_NAME / "model-settings.json").write_text(json.dumps(model, indent=2) + "\n")


def _started(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot), None once it is gone: with
    the pid it names one process, never a later one that reuses the number."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        kids = children(queue.pop())
        found += kids
        queue += kids
    return found


def _stop_tree(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM to MLServer's main process (it stops its workers), then SIGKILL to any of its
    descendants, as they were when it was asked to stop, that outlived it."""
    if proc.poll() is not None:
        return
    leftovers = [(pid, _started(pid)) for pid in _descendants(proc.pid)]
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    for pid, started in leftovers:
        if started is not None and _started(pid) == started:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextmanager
def mlserver_deployment(
    work: Path, model_dir: Path, workers: int = 2, timeout: float = 180
) -> Iterator[Deployment]:
    """MLServer on free loopback ports serving `model_dir`/model.joblib; stopped on exit."""
    binary = ensure_mlserver()
    http_port, grpc_port, metrics_port = free_ports(3)
    folder = work / "mlserver"
    write_mlserver_settings(folder, http_port, grpc_port, metrics_port,
                            model_dir / "model.joblib", workers)  # fmt: skip
    env = {
        "PATH": f"{binary.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    log = folder / "mlserver.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log.open("ab") as out:
            # cwd: MLServer keeps its metrics and environments directories there.
            proc = subprocess.Popen(
                [str(binary), "start", str(folder)], cwd=folder, env=env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{http_port}"
        started = time.monotonic()
        running = proc
        try:
            # /v2/health/ready answers before the model is loaded; the model's own does not.
            wait_http(
                f"{url}/v2/models/{MODEL_NAME}/ready", timeout, lambda: running.poll() is None
            )
        except ToolError:
            tail = log.read_text(errors="replace")[-3000:]
            raise ToolError(f"MLServer did not become ready; log tail:\n{tail}") from None
        print(f"mlserver: ready in {time.monotonic() - started:.0f}s at {url}", flush=True)
        main = proc.pid
        yield Deployment(
            url=url,
            # Its inference workers (children); the main process parses HTTP and batches.
            workers=lambda: children(main),
            others=lambda: {"mlserver main": [main]},
        )
    finally:
        if proc is not None:
            _stop_tree(proc)
