"""`/metrics` in-process: what each metric counts, labels bounded by route templates."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics import MetricWrapperBase
from redis.asyncio import Redis

from service.auth.tokens import TokenService
from service.infra import metrics
from service.infra.metrics import _Observations
from service.main import create_app
from service.rules.scopes import Scope
from tests.support.auth import bearer
from tests.support.processes import free_port
from tests.support.prom import samples, value
from tests.support.settings import make_settings

BODY = {"data": [5.1, 3.5, 1.4, 0.2]}  # setosa
VIRGINICA = [6.9, 3.1, 5.4, 2.1]


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


async def test_metrics_is_public_unlimited_and_not_in_the_schema(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert "ratelimit" not in response.headers
    schema = (await client.get("/openapi.json")).json()
    assert "/metrics" not in schema["paths"]


async def test_requests_are_counted_by_route_template_and_status(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    before = await scrape(client)
    assert (await client.delete("/users/nobody", headers=admin_headers)).status_code == 404
    assert (await client.get("/users/nobody", headers=admin_headers)).status_code == 405
    assert (await client.get("/no/such/path/12345")).status_code == 404
    after = await scrape(client)
    route = "/users/{username}"
    template = {"method": "DELETE", "route": route, "status": "404"}
    wrong_method = {"method": "GET", "route": route, "status": "405"}
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    for labels in (template, wrong_method, unmatched):
        assert (
            value(after, "http_requests_total", **labels)
            == value(before, "http_requests_total", **labels) + 1
        )
        count = "http_request_duration_seconds_count"
        assert value(after, count, **labels) == value(before, count, **labels) + 1
    routes = {dict(labels).get("route") for _, labels in samples(after)}
    assert "/users/nobody" not in routes
    assert "/no/such/path/12345" not in routes
    # The scrape itself is in flight while it renders.
    assert value(after, "http_requests_in_flight") >= 1


async def test_predictions_batch_sizes_and_inference_latency(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    before = await scrape(client)
    assert (await client.post("/predict", json=BODY, headers=user_headers)).status_code == 200
    batch = {"instances": [BODY["data"], VIRGINICA, VIRGINICA]}
    assert (await client.post("/predict/batch", json=batch, headers=user_headers)).is_success
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("predictions_total", label="setosa") == 2
    assert delta("predictions_total", label="virginica") == 2
    assert delta("prediction_batch_size_count") == 2
    assert delta("prediction_batch_size_sum") == 4
    assert delta("prediction_batch_size_bucket", le="1.0") == 1
    assert delta("inference_duration_seconds_count") == 2
    assert 0 < delta("inference_duration_seconds_sum") < 1


async def test_model_version_is_exposed(client: httpx.AsyncClient, app: Any) -> None:
    version = app.state.runtime.predictor.manifest.version
    assert value(await scrape(client), "model_info", version=version) == 1


async def test_auth_failures_are_counted_by_reason(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    assert (await client.get("/users/me")).status_code == 401
    assert (await client.get("/users/me", headers=bearer("not-a-jwt"))).status_code == 401
    wrong = {"grant_type": "password", "username": "admin", "password": "wrong-password"}
    assert (await client.post("/token", data=wrong)).status_code == 400
    after = await scrape(client)
    for reason in ("missing", "malformed", "bad_credentials"):
        assert value(after, "auth_failures_total", reason=reason) == (
            value(before, "auth_failures_total", reason=reason) + 1
        )


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_predict": "2/minute"}])
async def test_rate_limit_rejections_are_counted_by_policy(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    before = await scrape(client)
    codes = [
        (await client.post("/predict", json=BODY, headers=user_headers)).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    after = await scrape(client)
    assert value(after, "rate_limit_rejections_total", policy="predict") == (
        value(before, "rate_limit_rejections_total", policy="predict") + 1
    )


async def test_redis_errors_are_counted(model_dir: Path, redis: Redis) -> None:
    """Nothing listens on the port: every Redis call fails fast with ConnectionError."""
    settings = make_settings(f"redis://127.0.0.1:{free_port()}/0", model_dir, admin_username=None)
    app = create_app(settings)
    token = TokenService(settings).issue_pair(
        "alice",
        frozenset({Scope.PREDICT}),
        "v1",
        session="s1",
        session_ends_at=int(time.time()) + 3600,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            before = await scrape(client)
            me = await client.get("/users/me", headers=bearer(token.access_token))
            assert me.status_code == 503
            assert (await client.get("/readyz")).status_code == 503
            after = await scrape(client)
    errors = value(after, "redis_errors_total", error="ConnectionError")
    # The two requests' errors, and any of the start-up catch-up retrying meanwhile.
    assert errors >= value(before, "redis_errors_total", error="ConnectionError") + 2


def test_tallied_observations_land_as_observe_would_put_them() -> None:
    """The hot path's tallies reach a histogram exactly as one `observe` per value would."""
    registry = CollectorRegistry()
    bounds = (0.001, 0.01, 0.1, 1.0)
    direct = Histogram("direct_seconds", "d", ["route"], buckets=bounds, registry=registry)
    tallied = Histogram("tallied_seconds", "t", ["route"], buckets=bounds, registry=registry)
    observations = _Observations(tallied)
    for sample in (0.0005, 0.001, 0.0011, 0.05, 0.1, 0.7, 3.0, 0.001):
        direct.labels("/x").observe(sample)
        observations.observe(sample)
    observations.flush_into(tallied.labels("/x"))
    observations.flush_into(tallied.labels("/x"))  # a second flush adds nothing
    for suffix, extra in [
        ("_count", {}),
        ("_sum", {}),
        *(("_bucket", {"le": le}) for le in ("0.001", "0.01", "0.1", "1.0", "+Inf")),
    ]:
        labels = {"route": "/x", **extra}
        expected = registry.get_sample_value(f"direct_seconds{suffix}", labels)
        assert registry.get_sample_value(f"tallied_seconds{suffix}", labels) == expected


def test_every_metric_is_in_the_readme_metrics_table() -> None:
    """Operators build dashboards and alerts from the README's table."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("**Metrics.**") : readme.index("## Configuration")]
    names = {
        metric.name + ("_total" if metric.type == "counter" else "")
        for collector in metrics.__dict__.values()
        if isinstance(collector, MetricWrapperBase)
        for metric in collector.describe()
    }
    assert names
    assert sorted(name for name in names if f"`{name}" not in table) == []
