"""Steady authenticated load through nginx for the fault tests (an instance killed, stopped
or reloaded; a Redis primary lost): concurrent clients reading `/users/me` and predicting
until stopped, every request's timing and answer kept, for each test to judge."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.deploy.test_cluster import SAMPLE
from tests.support.auth import bearer

CLIENTS = 8
# Correct answers under load: a 429 too on /predict, whose limit is small.
PREDICT_OK = frozenset({200, 429})


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    ended: float
    predicted: bool  # POST /predict, else GET /users/me
    status: int  # 0: no HTTP answer at all
    retry_after: str | None
    detail: str  # the body or the client error, when the answer was not a correct one

    @property
    def ok(self) -> bool:
        return correct(self.predicted, self.status)


def correct(predicted: bool, status: int) -> bool:
    """Whether `status` is a correct answer to a prediction (`predicted`) or a read."""
    return status in PREDICT_OK if predicted else status == 200


class Load:
    """`clients` clients through nginx, half reading `/users/me`, half predicting, until
    stopped. A client that got a wrong answer waits a moment before the next request, as
    one honouring Retry-After would."""

    def __init__(self, http: httpx.AsyncClient, url: str, token: str) -> None:
        self.http, self.url, self.headers = http, url, bearer(token)
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _request(self, predict: bool) -> httpx.Response:
        if predict:
            return await self.http.post(self.url + "/predict", json=SAMPLE, headers=self.headers)
        return await self.http.get(self.url + "/users/me", headers=self.headers)

    async def _client(self, index: int) -> None:
        predict = bool(index % 2)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = await self._request(predict)
                status, retry_after = response.status_code, response.headers.get("retry-after")
                detail = "" if correct(predict, status) else response.text[:200]
            except httpx.HTTPError as exc:
                status, retry_after, detail = 0, None, f"{type(exc).__name__}: {exc}"
            outcome = Outcome(started, time.monotonic(), predict, status, retry_after, detail)
            self.outcomes.append(outcome)
            if not outcome.ok:
                await asyncio.sleep(0.05)

    def start(self, clients: int = CLIENTS) -> None:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(clients)]

    async def stop(self) -> list[Outcome]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.outcomes


def children(pid: int) -> set[int]:
    """The child processes of `pid` (a gunicorn master's workers)."""
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
