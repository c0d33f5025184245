"""The shipped Prometheus scrape config and Grafana dashboard stay in step with the metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML comes with yamllint; no stubs
from prometheus_client.metrics import MetricWrapperBase

from service.infra import metrics

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def exposed_names() -> set[str]:
    names: set[str] = set()
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for family in obj.describe():
                names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def test_scrape_config_targets_each_instance_metrics() -> None:
    config: dict[str, Any] = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    # make cluster's instances (not nginx on 8000, which denies /metrics).
    assert targets == ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]


def test_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {name for expr in exprs for name in re.findall(r"([a-z_]+)\{", expr)}
    assert used - exposed_names() == set()
    # Every metric the service exports is on the dashboard.
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            assert {family.name for family in obj.describe()} <= families
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
