"""Logging: one JSON object per line (or a readable line with LOG_FORMAT=text) for the
service, uvicorn and gunicorn alike.

`logging_config(settings)` is a `dictConfig` dict. deploy/gunicorn.conf.py passes it as
`logconfig_dict`, so the master, its workers and gunicorn's and uvicorn's own loggers share
one stderr handler; `configure_logging` applies it in-process only when nothing has
configured logging yet (plain `uvicorn --factory`), so an embedding program's or pytest's
handlers are left alone.

Every line written while a request is served carries its request id (from the request
context the middleware opens, `service.infra.context`), so a warning from deep inside a
request joins that request's access line.
As a last line of defence, anything shaped like a bearer credential or a JWT is masked in
the formatted line; nothing should log one in the first place.
"""

from __future__ import annotations

import logging
import logging.config
import logging.handlers
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from service.infra.config import Settings
from service.infra.context import current_context

ACCESS_LOGGER = "service.access"
STDERR_HANDLER = "stderr"
_SECRET_RE = re.compile(r"[Bb]earer\s+\S+|eyJ[\w-]*\.[\w-]+\.[\w-]*")
REDACTED = "[redacted]"


def redact(line: str) -> str:
    # Two substring scans cost a tenth of the regex, and almost every line has neither.
    if "earer" in line or "eyJ" in line:
        return _SECRET_RE.sub(REDACTED, line)
    return line


_last_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds; the part up to the second is reused within a second."""
    global _last_second
    second = int(created)
    if _last_second[0] != second:
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_last_second[1]}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """`time`, `level`, `logger`, `message`, `instance`, `request_id` when in a request,
    the record's `fields` dict (pass `extra={"fields": {...}}`), and `traceback` on errors."""

    def __init__(self, instance: str = "") -> None:
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "instance": self.instance,
        }
        context = current_context()
        if context is not None:
            payload["request_id"] = context.request_id
        fields = getattr(record, "fields", None)
        if fields:
            payload.update(fields)
        if record.exc_info:
            payload["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return redact(orjson.dumps(payload, default=str).decode())


class TextFormatter(logging.Formatter):
    """`time level logger [request id] message key=value ...`, then any traceback."""

    def __init__(self, instance: str = "") -> None:
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record.created), record.levelname, record.name]
        context = current_context()
        if context is not None:
            parts.append(f"[{context.request_id}]")
        parts.append(record.getMessage())
        fields = getattr(record, "fields", None)
        if fields:
            parts.extend(f"{key}={value}" for key, value in fields.items() if value is not None)
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return redact(line)


def logging_config(settings: Settings) -> dict[str, Any]:
    """Root, gunicorn and uvicorn loggers on one stderr handler with our formatter.

    gunicorn's and uvicorn's access loggers are silenced: the middleware writes the access
    log, with the route template, user and request id they do not know.
    """
    formatter = JsonFormatter if settings.log_format == "json" else TextFormatter
    level = settings.log_level.upper()
    own = {"level": level, "handlers": [STDERR_HANDLER], "propagate": False}
    silent = {"level": "WARNING", "handlers": [], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "main": {
                "()": f"{formatter.__module__}.{formatter.__qualname__}",
                "instance": settings.instance_name,
            }
        },
        "handlers": {
            STDERR_HANDLER: {
                "class": "logging.StreamHandler",
                "formatter": "main",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": [STDERR_HANDLER]},
        "loggers": {
            # uvicorn-worker hands gunicorn.error's handlers and level to uvicorn.error.
            "gunicorn.error": own,
            "uvicorn.error": own,
            "gunicorn.access": silent,
            "uvicorn.access": silent,
        },
    }


def configure_logging(settings: Settings) -> None:
    """Apply `logging_config` unless logging is already configured (gunicorn, pytest)."""
    if logging.root.handlers:
        return
    logging.config.dictConfig(logging_config(settings))


class _Deferred(logging.handlers.QueueHandler):
    """Hands records to the queue as they are: the writer's handlers format them."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _BatchWriter(threading.Thread):
    """Formats and writes the queued access records every `interval` seconds, each batch in
    one write per handler.

    logging's own QueueListener wakes on every record: a thread switch and a contest for the
    GIL with the event loop per request, which cost about 160 µs of a worker's CPU per
    `POST /predict` under load (`make bench` with LOG_LEVEL=warning against info). Waking a
    few times a second instead costs the request only the queue's append. A record keeps the
    time it was made; it is written at most `interval` later, and a worker that is killed
    outright loses at most that much of its log.
    """

    def __init__(
        self,
        records: queue.SimpleQueue[logging.LogRecord],
        handlers: list[logging.StreamHandler[Any]],
        interval: float,
    ) -> None:
        super().__init__(name="access-log", daemon=True)
        self._records = records
        self._handlers = handlers
        self._interval = interval
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self._interval):
            self._write(self._drain())
        self._write(self._drain())

    def stop(self) -> None:
        self._stopping.set()
        self.join()

    def _drain(self) -> list[logging.LogRecord]:
        batch: list[logging.LogRecord] = []
        while True:
            try:
                batch.append(self._records.get_nowait())
            except queue.Empty:
                return batch

    def _write(self, batch: list[logging.LogRecord]) -> None:
        if not batch:
            return
        for handler in self._handlers:
            lines = []
            for record in batch:
                if record.levelno < handler.level:
                    continue
                try:
                    lines.append(handler.format(record) + handler.terminator)
                except Exception:
                    handler.handleError(record)
            if not lines:
                continue
            handler.acquire()
            try:
                handler.stream.write("".join(lines))
                handler.flush()
            except Exception:
                handler.handleError(batch[-1])
            finally:
                handler.release()


def defer_access_log(interval: float = 0.1) -> Callable[[], None]:
    """Format and write the access log on a thread of its own, off the request path: a
    request only builds its record and queues it. Per worker (threads do not survive a
    fork); returns the function that writes what is left and restores the logger.

    Only when our own logging configuration is in place (gunicorn's `logconfig_dict`,
    `configure_logging`): an embedding program's or pytest's handlers are left alone.
    """
    access = logging.getLogger(ACCESS_LOGGER)
    targets = [
        h
        for h in logging.root.handlers
        if h.get_name() == STDERR_HANDLER and isinstance(h, logging.StreamHandler)
    ]
    if not targets or access.handlers:
        return lambda: None
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = _BatchWriter(records, targets, interval)
    access.addHandler(_Deferred(records))
    access.propagate = False
    writer.start()

    def stop() -> None:
        writer.stop()
        access.handlers.clear()
        access.propagate = True

    return stop
