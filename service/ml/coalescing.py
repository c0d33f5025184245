"""Coalesced inference: the small predictions a worker's concurrent requests ask for within
one turn of the event loop run as one call of the predictor.

Under load a worker holds dozens of requests at once, and their gate replies arrive
together (one pipelined round trip, `service.infra.autopipeline`), so they reach the model
in the same loop turn. Evaluated one by one, each row pays the forest's whole fixed cost
(two dozen numpy calls, with caches the other requests have just cooled): ~29 µs for one
row alone and twice that under load, against ~56 µs for eight rows in one call
(`deploy/bench/model_bench.py`). This is a model server's adaptive batching with no
waiting: a request that arrives alone is predicted on the next loop turn, and a batch
never waits for more requests to come.

Only a predictor whose rows are independent and bit-for-bit the same whatever else is in
the call may be coalesced (`ForestPredictor`: see its docstring); each caller gets exactly
the probabilities it would have got alone. A call that fails is retried row group by row
group, so one caller's bad input answers only that caller.
"""

from __future__ import annotations

import asyncio

import numpy as np

from service.ml.predictor import FloatArray, Predictor

_Call = tuple[FloatArray, "asyncio.Future[FloatArray]"]


class CoalescedInference:
    """Predicts on the event loop, joining the calls made in one loop turn into calls of
    at most `max_rows` rows (a call larger than that runs alone)."""

    def __init__(self, predictor: Predictor, max_rows: int) -> None:
        self.predictor = predictor
        self._max_rows = max_rows
        self._pending: list[_Call] = []
        self._flush_scheduled = False

    async def predict_proba(self, rows: FloatArray) -> FloatArray:
        """`predictor.predict_proba(rows)`, shared with the calls of this loop turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[FloatArray] = loop.create_future()
        self._pending.append((rows, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self._flush_scheduled = False
        calls = [call for call in pending if not call[1].done()]  # cancelled callers
        group: list[_Call] = []
        size = 0
        for call in calls:
            rows = len(call[0])
            if group and size + rows > self._max_rows:
                self._predict(group)
                group, size = [], 0
            group.append(call)
            size += rows
        if group:
            self._predict(group)

    def _predict(self, group: list[_Call]) -> None:
        if len(group) == 1:
            self._predict_alone(group[0])
            return
        try:
            probabilities = self.predictor.predict_proba(np.concatenate([r for r, _ in group]))
        except Exception:  # one caller's rows; each gets its own outcome
            for call in group:
                self._predict_alone(call)
            return
        start = 0
        for rows, future in group:
            stop = start + len(rows)
            future.set_result(probabilities[start:stop])
            start = stop

    def _predict_alone(self, call: _Call) -> None:
        rows, future = call
        try:
            future.set_result(self.predictor.predict_proba(rows))
        except Exception as exc:
            future.set_exception(exc)
