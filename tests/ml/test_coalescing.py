"""Coalesced inference: the calls of one loop turn share predictor calls, and every caller
still gets exactly its own answer (or its own error)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.datasets import load_iris

from service.ml.coalescing import CoalescedInference
from service.ml.predictor import FloatArray, ForestPredictor

IRIS: FloatArray = np.asarray(load_iris().data, dtype=np.float64)


class CountingPredictor:
    """The real predictor, recording the row count of each call it serves."""

    def __init__(self, predictor: ForestPredictor) -> None:
        self.predictor = predictor
        self.calls: list[int] = []

    def predict_proba(self, X: FloatArray) -> FloatArray:
        self.calls.append(len(X))
        return self.predictor.predict_proba(X)


def _inputs(sizes: list[int]) -> list[FloatArray]:
    rng = np.random.default_rng(7)
    picks = [rng.choice(len(IRIS), size=n) for n in sizes]
    noise = [rng.normal(0.0, 0.3, size=(n, IRIS.shape[1])) for n in sizes]
    return [IRIS[p] + e for p, e in zip(picks, noise, strict=True)]


def _assert_each_got_its_own(
    predictor: ForestPredictor, inputs: Sequence[FloatArray], answers: Sequence[object]
) -> None:
    """Every answer is exactly what predicting that caller's rows alone gives."""
    for rows, answer in zip(inputs, answers, strict=True):
        assert isinstance(answer, np.ndarray)
        np.testing.assert_array_equal(answer, predictor.predict_proba(rows))


@pytest.mark.parametrize(
    ("max_rows", "sizes", "calls"),
    [
        # Everything of one turn in one call.
        (64, [1, 3, 1, 2, 5, 1, 1, 4] * 3, [54]),
        # Grouped up to max_rows, in order; a call larger than that runs alone.
        (8, [3, 3, 3, 20, 2, 2, 2, 2, 1], [6, 3, 20, 8, 1]),
    ],
    ids=["one-call", "grouped-up-to-max-rows"],
)
async def test_one_turns_calls_share_calls_and_get_exactly_their_own_answers(
    predictor: ForestPredictor, max_rows: int, sizes: list[int], calls: list[int]
) -> None:
    counting = CountingPredictor(predictor)
    inference = CoalescedInference(counting, max_rows=max_rows)  # type: ignore[arg-type]
    inputs = _inputs(sizes)

    answers = await asyncio.gather(*(inference.predict_proba(rows) for rows in inputs))

    assert counting.calls == calls
    _assert_each_got_its_own(predictor, inputs, answers)


@pytest.mark.parametrize(
    "bad",
    [
        np.array([[np.nan, 1.0, 1.0, 1.0]]),
        np.array([[1e39, 1.0, 1.0, 1.0]]),  # finite, but not in float32
        np.ones((1, 3)),  # the wrong feature count: the rows cannot even be joined
    ],
    ids=["nan", "float32-overflow", "shape"],
)
async def test_a_bad_input_fails_only_its_own_caller(
    predictor: ForestPredictor, bad: npt.NDArray[np.float64]
) -> None:
    inference = CoalescedInference(predictor, max_rows=64)
    good = _inputs([1, 2, 1])

    results = await asyncio.gather(
        inference.predict_proba(good[0]),
        inference.predict_proba(bad),
        inference.predict_proba(good[1]),
        inference.predict_proba(good[2]),
        return_exceptions=True,
    )

    assert isinstance(results[1], ValueError)
    _assert_each_got_its_own(predictor, good, [results[0], *results[2:]])


async def test_a_call_alone_is_answered_on_the_next_turn(predictor: ForestPredictor) -> None:
    inference = CoalescedInference(predictor, max_rows=64)
    (rows,) = _inputs([1])
    answer = await asyncio.wait_for(inference.predict_proba(rows), timeout=1)
    np.testing.assert_array_equal(answer, predictor.predict_proba(rows))


async def test_a_cancelled_caller_is_skipped_and_the_others_answered(
    predictor: ForestPredictor,
) -> None:
    counting = CountingPredictor(predictor)
    inference = CoalescedInference(counting, max_rows=64)  # type: ignore[arg-type]
    inputs = _inputs([1, 2, 1])
    tasks = [asyncio.ensure_future(inference.predict_proba(rows)) for rows in inputs]
    await asyncio.sleep(0)  # each task has queued its call
    tasks[1].cancel()

    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(results[1], asyncio.CancelledError)
    assert counting.calls == [2]
    _assert_each_got_its_own(predictor, [inputs[0], inputs[2]], [results[0], results[2]])
