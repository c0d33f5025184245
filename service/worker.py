"""The gunicorn worker class: uvicorn-worker's UvicornWorker (not the deprecated
`uvicorn.workers`), without uvicorn's `Server` banner and without websockets (the API has
none).

gunicorn imports this module in the master, so the protocol and loop modules imported here
are loaded once, before the fork: a new worker (after a crash, a restart or a SIGHUP
reload) starts serving without importing them while connections wait in the backlog.
"""

from __future__ import annotations

from typing import Any, ClassVar

import uvicorn.lifespan.on
import uvicorn.loops.uvloop
import uvicorn.protocols.http.httptools_impl  # noqa: F401 - preloaded, see above
from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop",
        "http": "httptools",
        "ws": "none",
        "lifespan": "on",
        "server_header": False,
    }
