"""The worker's HTTP protocol writes each response's head together with its first body bytes,
so a worker killed mid-response never leaves the balancer half a response to forward.

Driven as uvicorn's own tests drive a protocol: bytes in through `data_received`, every
`write` the protocol makes recorded by a transport stand-in. The real server (gunicorn with
this worker) is exercised by tests/serving.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.worker import OneWriteProtocol, Worker

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        return None


async def _serve(app: Any, *requests: bytes) -> RecordingTransport:
    config = Config(app=app, http=OneWriteProtocol, lifespan="off", access_log=False)
    protocol = OneWriteProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    for request in requests:
        protocol.data_received(request)
        for _ in range(20):  # the app runs in its own task
            await asyncio.sleep(0)
    return transport


def _app(*bodies: bytes, status: int = 200, length: bool = True) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-length", str(sum(map(len, bodies))).encode())] if length else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for index, body in enumerate(bodies):
            more = index < len(bodies) - 1
            await send({"type": "http.response.body", "body": body, "more_body": more})

    return app


def test_the_worker_serves_with_the_one_write_protocol() -> None:
    assert Worker.CONFIG_KWARGS["http"] is OneWriteProtocol


async def test_a_response_is_one_write() -> None:
    transport = await _serve(_app(b'{"ok":true}'), GET)
    (write,) = transport.writes
    assert write.startswith(b"HTTP/1.1 200 OK\r\n")
    assert write.endswith(b'\r\n\r\n{"ok":true}')


async def test_keep_alive_requests_are_one_write_each() -> None:
    transport = await _serve(_app(b"first"), GET, GET)
    assert len(transport.writes) == 2
    assert all(w.startswith(b"HTTP/1.1 200") and w.endswith(b"first") for w in transport.writes)


async def test_a_head_response_has_its_head_written() -> None:
    head = b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n"
    transport = await _serve(_app(b"ignored"), head, GET)
    first, second = transport.writes
    assert first.startswith(b"HTTP/1.1 200")
    assert first.endswith(b"\r\n\r\n")
    assert second.endswith(b"ignored")


async def test_a_streamed_response_sends_its_head_with_the_first_chunk() -> None:
    transport = await _serve(_app(b"one", b"two", length=False), GET)
    first, *rest = transport.writes
    assert first.startswith(b"HTTP/1.1 200")
    assert first.endswith(b"3\r\none\r\n")
    assert b"".join(rest) == b"3\r\ntwo\r\n0\r\n\r\n"


async def test_a_closing_response_is_written_before_the_connection_closes() -> None:
    request = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    transport = await _serve(_app(b"bye"), request)
    (write,) = transport.writes
    assert write.endswith(b"bye")
    assert transport.closed


async def test_100_continue_is_not_held_back() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await _app(b"done")(scope, receive, send)

    head = b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    transport = await _serve(app, head)
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


@pytest.mark.parametrize("fails_after_start", [True, False])
async def test_an_app_failing_mid_response_never_sends_half_a_response(
    fails_after_start: bool,
) -> None:
    """The head was held, so the client gets a whole 500 instead of a cut response."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if fails_after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("boom")

    transport = await _serve(app, GET)
    (write,) = transport.writes
    assert write.startswith(b"HTTP/1.1 500")
    assert write.endswith(b"Internal Server Error")
