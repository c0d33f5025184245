"""`AnswerCache`: the bytes kept for a row of probabilities are exactly what serialising its
answer gives, rows it doesn't know are built afresh, and what it keeps is bounded."""

from __future__ import annotations

import tracemalloc

import numpy as np
import orjson
import pytest

from service.api import answers as answers_module
from service.api.answers import AnswerCache, answers

LABELS = ("setosa", "versicolor", "virginica")


def _probabilities(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet([1.0, 1.0, 1.0], rows)


def _served(cache: AnswerCache, probabilities: np.ndarray) -> bytes:
    winners = probabilities.argmax(axis=1).tolist()
    return orjson.dumps(cache.serialised(probabilities, winners))


def _fresh(probabilities: np.ndarray) -> bytes:
    winners = probabilities.argmax(axis=1).tolist()
    return orjson.dumps(answers(LABELS, winners, probabilities.tolist()))


def test_a_batch_of_known_rows_is_served_from_the_kept_bytes() -> None:
    distinct = _probabilities(5, seed=1)
    batch = distinct[[0, 1, 2, 3, 4, 0, 0, 3]]
    cache = AnswerCache(LABELS)

    first = cache.serialised(batch, batch.argmax(axis=1).tolist())
    assert all(isinstance(answer, dict) for answer in first)
    assert len(cache) == 5

    again = cache.serialised(batch[::-1], batch[::-1].argmax(axis=1).tolist())
    assert all(isinstance(answer, orjson.Fragment) for answer in again)
    assert orjson.dumps(again) == _fresh(batch[::-1])


def test_a_batch_with_unknown_rows_is_built_afresh_and_they_are_kept() -> None:
    known, unknown = _probabilities(4, seed=2), _probabilities(3, seed=3)
    cache = AnswerCache(LABELS)
    _served(cache, known)

    mixed = np.vstack([known[:2], unknown, known[2:]])
    assert _served(cache, mixed) == _fresh(mixed)
    assert len(cache) == 7
    assert _served(cache, mixed) == _fresh(mixed)


def test_rows_differing_in_any_bit_are_different_keys() -> None:
    """Rows that differ only in their last bits, or in the sign of a zero, are different
    keys; each gets its own answer."""
    row = np.array([[0.1, 0.2, 0.7]])
    nudged = np.array([[0.1, 0.2, np.nextafter(0.7, 1.0)]])
    signed = np.array([[0.0, 1.0, 0.0], [-0.0, 1.0, 0.0]])
    cache = AnswerCache(LABELS)
    for probabilities in (row, nudged, signed, row, nudged, signed):
        assert _served(cache, probabilities) == _fresh(probabilities)
    assert len(cache) == 4


def test_what_is_kept_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answers_module, "MAX_KNOWN_ANSWERS", 10)
    cache = AnswerCache(LABELS)
    for seed in range(4):
        probabilities = _probabilities(8, seed=seed)
        assert _served(cache, probabilities) == _fresh(probabilities)
        assert _served(cache, probabilities) == _fresh(probabilities)
    assert len(cache) == 10


def test_kept_bytes_are_compact() -> None:
    """orjson's own output keeps a ~4 KB buffer per call: kept as it is, a full cache would
    hold ~17 MB per worker instead of ~1.2 MB."""
    probabilities = _probabilities(1_000, seed=5)
    cache = AnswerCache(LABELS)
    tracemalloc.start()
    try:
        cache.serialised(probabilities, probabilities.argmax(axis=1).tolist())
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(cache) == 1_000
    assert held / 1_000 < 600
