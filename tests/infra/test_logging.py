"""Structured logs: formatters, request ids, the access line, and no secret in any line."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from service.infra.config import Settings
from service.infra.context import close_context, open_context
from service.infra.logs import (
    ACCESS_LOGGER,
    STDERR_HANDLER,
    AccessEntry,
    JsonFormatter,
    TextFormatter,
    access_record,
    configure_logging,
    defer_access_log,
    log_access,
    logging_config,
    redact,
)
from tests.support.auth_traffic import exercise_auth, find_leaks

REQUEST_ID = re.compile(r"[0-9a-f]{32}")


def _record(message: str = "hello %s", *args: object, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("service.test", logging.WARNING, __file__, 1, message, args, None)
    if fields:
        record.fields = fields
    return record


def test_json_lines_carry_the_request_id_fields_and_trace() -> None:
    record = _record("hello %s", "world", user="alice")
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    _, token = open_context("req-1")
    try:
        line = JsonFormatter("api-7").format(record)
    finally:
        close_context(token)
    assert "\n" not in line
    payload = json.loads(line)
    assert payload["message"] == "hello world"
    assert payload["level"] == "warning"
    assert payload["logger"] == "service.test"
    assert payload["instance"] == "api-7"
    assert payload["request_id"] == "req-1"
    assert payload["user"] == "alice"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", payload["time"])
    assert "ValueError: boom" in payload["traceback"]


def test_text_lines_are_readable() -> None:
    line = TextFormatter().format(_record("GET /healthz 200", status=200, user=None))
    assert re.fullmatch(r"\S+Z WARNING service.test GET /healthz 200 status=200", line)


def test_bearer_credentials_and_jwts_are_masked() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    line = redact(f"Authorization: Bearer abc.def token={jwt} ok")
    assert line == "Authorization: [redacted] token=[redacted] ok"
    assert redact("nothing to hide") == "nothing to hide"


def test_configuration_honours_log_format_and_leaves_existing_handlers(
    settings: Settings,
) -> None:
    config = logging_config(settings.model_copy(update={"log_format": "json"}))
    assert config["formatters"]["main"]["()"].endswith("JsonFormatter")
    config = logging_config(settings.model_copy(update={"log_format": "text"}))
    assert config["formatters"]["main"]["()"].endswith("TextFormatter")
    assert config["loggers"]["uvicorn.access"]["level"] == "WARNING"
    handlers = list(logging.root.handlers)
    assert handlers  # pytest's capture handlers
    configure_logging(settings)
    assert logging.root.handlers == handlers


async def test_request_id_is_echoed_when_sane_and_generated_otherwise(
    client: httpx.AsyncClient,
) -> None:
    sane = "trace-4f2a.B_9"
    echoed = await client.get("/healthz", headers={"X-Request-ID": sane})
    assert echoed.headers["x-request-id"] == sane
    for bad in ("a" * 129, "has space", "semi;colon", 'quote"', "é"):
        response = await client.get("/healthz", headers=[(b"X-Request-ID", bad.encode())])
        assert REQUEST_ID.fullmatch(response.headers["x-request-id"]), bad
    first = (await client.get("/healthz")).headers["x-request-id"]
    second = (await client.get("/no-such-route")).headers["x-request-id"]
    assert REQUEST_ID.fullmatch(first)
    assert first != second


async def test_one_access_line_per_request(
    client: httpx.AsyncClient, user_headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = await client.post(
        "/predict", json={"data": [5.1, 3.5, 1.4, 0.2]}, headers=user_headers
    )
    assert response.status_code == 200
    lines = [r for r in caplog.records if r.name == "service.access"]
    assert len(lines) == 1
    payload = json.loads(JsonFormatter("here").format(lines[0]))
    assert payload["request_id"] == response.headers["x-request-id"]
    assert {k: payload[k] for k in ("method", "route", "status", "user", "client_ip")} == {
        "method": "POST",
        "route": "/predict",
        "status": 200,
        "user": "alice",
        "client_ip": "127.0.0.1",
    }
    assert payload["level"] == "info"
    assert payload["instance"] == "here"
    assert 0 < payload["duration_ms"] < 5000


async def test_no_secret_reaches_any_log_line(
    client: httpx.AsyncClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = await exercise_auth(client)
    assert settings.jwt_secret is not None
    secrets.append(settings.jwt_secret.get_secret_value())
    assert any(r.name == "service.access" for r in caplog.records)
    # httpx logs the test client's URLs (one carries a token on purpose): not the service.
    server_records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    formatted = [
        formatter.format(record)
        for record in server_records
        for formatter in (JsonFormatter(), TextFormatter(), logging.Formatter())
    ]
    assert find_leaks("\n".join(formatted), secrets) == []


class _CountingStream:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        return None


@contextmanager
def _our_stderr_handler(formatter: logging.Formatter) -> Iterator[_CountingStream]:
    """The root logger with only the service's stderr handler (the one `defer_access_log`
    takes over), writing to a stream that keeps each write, and the access logger at INFO;
    both restored afterwards."""
    stream = _CountingStream()
    handler = logging.StreamHandler(stream)
    handler.set_name(STDERR_HANDLER)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    access = logging.getLogger(ACCESS_LOGGER)
    saved = root.handlers[:], access.level
    root.handlers = [handler]
    access.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.handlers, _ = saved
        access.setLevel(saved[1])


def test_access_lines_are_written_off_the_request_path_in_batches() -> None:
    """A request only queues its record: the writer thread formats a batch and writes it in
    one call, and stopping writes what is left, in order."""
    access = logging.getLogger(ACCESS_LOGGER)
    with _our_stderr_handler(logging.Formatter("%(message)s")) as stream:
        stop = defer_access_log(interval=3600)
        for n in range(200):
            access.info("line %d", n)
        assert stream.writes == []  # nothing formatted or written on the caller's thread
        stop()
    assert stream.writes == ["".join(f"line {n}\n" for n in range(200))]
    assert access.handlers == []
    assert access.propagate


ENTRIES = [
    AccessEntry(1764000000.25, "a" * 32, "POST", "/predict", 200, 1.234, "alice", "127.0.0.1"),
    AccessEntry(1764000001.999, "b" * 32, "GET", "unmatched", 404, 0.05, None, None),
    # Nothing should ever put a credential here; if something did, it is masked all the same.
    AccessEntry(1764000002.0, "c" * 32, "OTHER", "/token", 401, 3.0, "eyJa.eyJb.sig", "::1"),
]


@pytest.mark.parametrize("formatter", [JsonFormatter("api-1"), TextFormatter("api-1")])
@pytest.mark.parametrize("entry", ENTRIES)
def test_an_access_line_from_its_entry_is_the_line_of_its_record(
    formatter: JsonFormatter | TextFormatter, entry: AccessEntry
) -> None:
    """The writer thread formats entries without making records (`format_access`): the line
    must be the one the record would have given, field for field and in the same order."""
    expected = formatter.format(access_record(entry))
    assert formatter.format_access(entry) == expected
    assert "eyJa" not in expected


def test_access_entries_are_written_off_the_request_path_in_order_with_records() -> None:
    access = logging.getLogger(ACCESS_LOGGER)
    with _our_stderr_handler(JsonFormatter("api-1")) as stream:
        stop = defer_access_log(interval=3600)
        log_access(ENTRIES[0])
        access.warning("between")
        log_access(ENTRIES[1])
        assert stream.writes == []  # nothing formatted or written on the caller's thread
        stop()
        log_access(ENTRIES[2])  # after stop: handled at once, as a record
    lines = [json.loads(line) for line in "".join(stream.writes).splitlines()]
    assert [line["message"] for line in lines] == [
        "POST /predict 200",
        "between",
        "GET unmatched 404",
        "OTHER /token 401",
    ]
    assert lines[0]["time"] == "2025-11-24T16:00:00.250Z"
    assert lines[0]["request_id"] == "a" * 32


def test_a_handler_with_a_formatter_of_its_own_gets_the_access_record() -> None:
    with _our_stderr_handler(logging.Formatter("%(name)s %(levelname)s %(message)s")) as stream:
        stop = defer_access_log(interval=3600)
        log_access(ENTRIES[0])
        stop()
    assert stream.writes == ["service.access INFO POST /predict 200\n"]
