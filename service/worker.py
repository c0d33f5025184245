"""The gunicorn worker class: uvicorn-worker's UvicornWorker (not the deprecated
`uvicorn.workers`), without uvicorn's `Server` banner and without websockets (the API has
none), and with every response's head and first body bytes written together.

gunicorn imports this module in the master, so the protocol and loop modules imported here
are loaded once, before the fork: a new worker (after a crash, a restart or a SIGHUP
reload) starts serving without importing them while connections wait in the backlog.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, cast

import uvicorn.lifespan.on
import uvicorn.loops.uvloop  # noqa: F401 - preloaded, see above
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn_worker import UvicornWorker


class _Gathered:
    """Stands in for a connection's transport while one response is sent: collects what
    uvicorn writes, then hands it to the real transport in one write."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._parts: list[bytes] = []
        self._close = False

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    def close(self) -> None:
        self._close = True

    def flush(self) -> None:
        if self._parts:
            self._transport.write(b"".join(self._parts))
        if self._close:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, but the status line and headers wait for the first
    body message and leave with it in one write.

    uvicorn writes the head as soon as the app sends `http.response.start`. A worker killed
    between that write and the body's (kill -9, the OOM killer) leaves the balancer a
    response it has begun forwarding and can neither finish nor retry on another instance:
    the client gets a broken response. Written at once, a response is either all in the
    kernel (delivered even though the process is gone) or not begun (the balancer retries
    it elsewhere). One system call per response instead of two, too.
    """

    _held_start: ASGISendEvent | None = None

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            self._held_start = message
            return
        start, self._held_start = self._held_start, None
        if start is None:
            await super().send(message)
            return
        transport = self.transport
        gathered = _Gathered(transport)
        self.transport = cast(asyncio.Transport, gathered)  # duck-typed: see _Gathered
        try:
            await super().send(start)
            await super().send(message)
        finally:
            self.transport = transport
            gathered.flush()


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, serving each request with a `OneWriteCycle`."""

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        # A new cycle was made for this request (none for a protocol upgrade); its task
        # has not run yet, so its class can still be the subclass.
        if self.cycle is not None and self.cycle is not previous:
            self.cycle.__class__ = OneWriteCycle


class Worker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop",
        "http": OneWriteProtocol,
        "ws": "none",
        "lifespan": "on",
        "server_header": False,
    }
