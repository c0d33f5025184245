"""The gunicorn worker class: uvicorn-worker's UvicornWorker (not the deprecated
`uvicorn.workers`), without uvicorn's `Server` banner."""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": "auto",
        "server_header": False,
    }
