"""gunicorn configuration shared by `make run`, `make cluster`, the image and Kubernetes.

Everything comes from the same Settings as the app, so a bad variable stops the master
before it forks. Start with: gunicorn -c deploy/gunicorn.conf.py 'service.main:create_app()'

Logs: `logconfig_dict` gives gunicorn's, uvicorn's and the app's loggers one stderr handler
with the service's formatter (JSON unless LOG_FORMAT=text); see service/infra/logs.py.

Metrics: the workers share prometheus_client's multiprocess directory, which must hold only
this run's files. PROMETHEUS_MULTIPROC_DIR names it (the image, Compose, Kubernetes and
`make cluster` set it); when it is unset (`make run`, tests), this file creates a private
temporary directory and sets the variable before any worker forks, and the master removes
that directory when it exits. The master empties the directory at start and deletes a dead
worker's live gauges (in-flight requests, model info) so they stop counting.
"""

import gc
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from service.infra.config import load_settings
from service.infra.logs import logging_config

_settings = load_settings()

_private_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _private_metrics_dir = tempfile.mkdtemp(prefix="secure-ml-api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _private_metrics_dir
_metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
# It must exist before the app is preloaded: importing it creates metric files. (It is
# emptied in on_starting, which runs once per master, never again on a SIGHUP reload.)
_metrics_dir.mkdir(parents=True, exist_ok=True)

# prometheus_client chooses multiprocess mode when first imported: only now that it is set.
from prometheus_client import multiprocess  # noqa: E402

bind = [_settings.bind]
workers = _settings.web_concurrency
worker_class = "service.worker.Worker"
# The app (code, verified model) is loaded once, in the master, before it listens: workers
# forked from it serve within moments, so a restarted or reloaded (SIGHUP) instance never
# holds connections it cannot serve yet. Each worker opens its own Redis client in the app
# lifespan, after the fork. A new model or new code needs a restart, not a SIGHUP.
preload_app = True
# SIGTERM: stop accepting, let in-flight requests finish for up to this long, then kill.
graceful_timeout = _settings.graceful_timeout
timeout = 30
keepalive = 75
backlog = 2048
max_requests = 0
# Only these peers may set the client address through X-Forwarded-For (uvicorn picks the
# right-most untrusted entry, never the first one blindly).
forwarded_allow_ips = ",".join(_settings.trusted_proxies)
proxy_allow_ips = forwarded_allow_ips
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
logconfig_dict = logging_config(_settings)
proc_name = f"secure-ml-api:{_settings.instance_name}"
# gunicorn 27's control socket (for gunicornc) defaults to one path per user, which every
# instance on a host would fight over; nothing here uses it.
control_socket_disable = True


def on_starting(server: Any) -> None:
    """Start from an empty metrics directory: a previous run's files would add to ours (and
    the master's own, written when the app was preloaded, hold nothing: it serves nothing)."""
    for stale in _metrics_dir.glob("*.db"):
        stale.unlink()
    server.log.info("metrics directory %s", _metrics_dir)


def when_ready(server: Any) -> None:
    """Collect once and freeze what the preloaded app left, in the master, before any
    worker forks: workers then share those pages untouched (no copy-on-write from a
    collection) and start without a full collection of their own."""
    gc.collect()
    gc.freeze()


def child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    if _private_metrics_dir is not None:
        shutil.rmtree(_private_metrics_dir, ignore_errors=True)
