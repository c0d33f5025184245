"""The app factory's lifespan, beyond what the route tests exercise."""

from __future__ import annotations

import gc

from fastapi import FastAPI

from service.main import YOUNG_COLLECTION_THRESHOLD


async def test_a_started_worker_collects_its_young_objects_rarely_and_froze_startup(
    app: FastAPI,
) -> None:
    """A young collection every 700 allocations rescanned the objects of the batch requests
    in flight, ~5% of a batch's CPU; startup's objects are frozen out of full collections."""
    assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD
    assert gc.get_freeze_count() > 0
