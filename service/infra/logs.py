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

The access log (one line per answered request, `log_access`) is written off the request
path once `defer_access_log` runs (in each worker's lifespan): a request queues an
`AccessEntry` tuple, and a writer thread formats and writes a batch of them a few times a
second.
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
from typing import Any, NamedTuple

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


class AccessEntry(NamedTuple):
    """One answered request, as its access line reports it."""

    created: float  # time.time() when it was answered
    request_id: str
    method: str
    route: str
    status: int
    duration_ms: float
    user: str | None
    client_ip: str | None

    @property
    def message(self) -> str:
        return f"{self.method} {self.route} {self.status}"

    def fields(self) -> dict[str, Any]:
        """The line's own fields, in the order they are written."""
        return {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "user": self.user,
            "client_ip": self.client_ip,
        }


_access_logger = logging.getLogger(ACCESS_LOGGER)


def access_record(entry: AccessEntry) -> logging.LogRecord:
    """The `service.access` record of an entry, as `logger.info` would make it (minus
    finding the caller's source line), stamped with the time the request was answered."""
    record = _access_logger.makeRecord(
        ACCESS_LOGGER,
        logging.INFO,
        __file__,
        0,
        "%s %s %d",
        (entry.method, entry.route, entry.status),
        None,
        extra={"fields": entry.fields()},
    )
    record.created = entry.created
    record.msecs = (entry.created - int(entry.created)) * 1000
    return record


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

    def format_access(self, entry: AccessEntry) -> str:
        """`format(access_record(entry))` outside any request, without the record."""
        payload = {
            "time": _timestamp(entry.created),
            "level": "info",
            "logger": ACCESS_LOGGER,
            "message": entry.message,
            "instance": self.instance,
        } | entry.fields()
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

    def format_access(self, entry: AccessEntry) -> str:
        """`format(access_record(entry))` outside any request, without the record."""
        parts = [_timestamp(entry.created), "INFO", ACCESS_LOGGER, entry.message]
        parts.extend(f"{key}={value}" for key, value in entry.fields().items() if value is not None)
        return redact(" ".join(parts))


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


_Queued = logging.LogRecord | AccessEntry


class _Deferred(logging.handlers.QueueHandler):
    """Hands records to the queue as they are: the writer's handlers format them."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _AccessQueue:
    """Where `log_access` puts entries while the access log is deferred (None otherwise)."""

    queue: queue.SimpleQueue[_Queued] | None = None


_access_queue = _AccessQueue()


def log_access(entry: AccessEntry) -> None:
    """Write a request's access line: queued as it is while the access log is deferred
    (the writer formats it), else handled now as a `service.access` record."""
    deferred = _access_queue.queue
    if deferred is None or _access_logger.filters:
        _access_logger.handle(access_record(entry))
    else:
        deferred.put(entry)


class _BatchWriter(threading.Thread):
    """Formats and writes the queued access lines every `interval` seconds, each batch in
    one write per handler.

    logging's own QueueListener wakes on every record: a thread switch and a contest for the
    GIL with the event loop per request, which cost about 160 µs of a worker's CPU per
    `POST /predict` under load (`make bench` with LOG_LEVEL=warning against info). Waking a
    few times a second instead costs the request only the queue's append. A request queues
    an `AccessEntry` (a tuple), not a `LogRecord`: the service's formatters write its line
    from the tuple (`format_access`), which takes a fifth of what making and formatting a
    record does. A line keeps the time its request was answered; it is written at most
    `interval` later, and a worker that is killed outright loses at most that much of its
    log.
    """

    def __init__(
        self,
        records: queue.SimpleQueue[_Queued],
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

    def _drain(self) -> list[_Queued]:
        batch: list[_Queued] = []
        while True:
            try:
                batch.append(self._records.get_nowait())
            except queue.Empty:
                return batch

    def _write(self, batch: list[_Queued]) -> None:
        if not batch:
            return
        for handler in self._handlers:
            lines = []
            for item in batch:
                try:
                    line = _line(handler, item)
                except Exception:
                    handler.handleError(_as_record(item))
                    continue
                if line is not None:
                    lines.append(line + handler.terminator)
            if not lines:
                continue
            handler.acquire()
            try:
                handler.stream.write("".join(lines))
                handler.flush()
            except Exception:
                handler.handleError(_as_record(batch[-1]))
            finally:
                handler.release()


def _line(handler: logging.Handler, item: _Queued) -> str | None:
    """The line `handler` writes for a queued item, None when its level or filters drop it."""
    if isinstance(item, AccessEntry) and not handler.filters:
        formatter = handler.formatter
        if isinstance(formatter, JsonFormatter | TextFormatter) and handler.level <= logging.INFO:
            return formatter.format_access(item)
    record = _as_record(item)
    if record.levelno < handler.level or not handler.filter(record):
        return None
    return handler.format(record)


def _as_record(item: _Queued) -> logging.LogRecord:
    return access_record(item) if isinstance(item, AccessEntry) else item


def defer_access_log(interval: float = 0.1) -> Callable[[], None]:
    """Format and write the access log on a thread of its own, off the request path: a
    request only queues its entry (`log_access`) or record. Per worker (threads do not
    survive a fork); returns the function that writes what is left and restores the logger.

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
    records: queue.SimpleQueue[_Queued] = queue.SimpleQueue()
    writer = _BatchWriter(records, targets, interval)
    access.addHandler(_Deferred(records))
    access.propagate = False
    _access_queue.queue = records
    writer.start()

    def stop() -> None:
        _access_queue.queue = None
        writer.stop()
        access.handlers.clear()
        access.propagate = True

    return stop
