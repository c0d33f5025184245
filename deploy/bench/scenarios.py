"""What the bench measures: the requests wrk sends, and the record of one wrk run.

Shared by the modules that drive the runs (wrk.py, profiling.py) and the one that reports
them (report.py), so the scenario names and result fields have a single definition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

# Typical Iris rows (cm), cycled to build the batch body.
ROWS = [
    [5.1, 3.5, 1.4, 0.2],
    [6.7, 3.0, 5.2, 2.3],
    [5.9, 3.0, 4.2, 1.5],
    [4.9, 3.1, 1.5, 0.1],
    [6.3, 2.9, 5.6, 1.8],
    [5.5, 2.4, 3.8, 1.1],
]


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    path: str
    body: bytes | None
    auth: bool


# The Open Inference Protocol's infer with the same row, as a V2 client sends it in JSON.
V2_BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": ROWS[0]}]}

SCENARIOS = (
    Scenario("ceiling GET /healthz", "GET", "/healthz", None, auth=False),
    Scenario("POST /predict", "POST", "/predict", json.dumps({"data": ROWS[0]}).encode(), True),
    # Right after /predict, so the two are measured under the same machine load.
    Scenario(
        "POST /v2/models/iris-rf/infer",
        "POST",
        "/v2/models/iris-rf/infer",
        json.dumps(V2_BODY).encode(),
        True,
    ),
    Scenario(
        "POST /predict/batch (64)",
        "POST",
        "/predict/batch",
        json.dumps({"instances": [ROWS[i % len(ROWS)] for i in range(64)]}).encode(),
        True,
    ),
)
CEILING, PREDICT, V2_INFER, BATCH = (s.name for s in SCENARIOS)


@dataclass
class Result:
    """One wrk run: where, what, how many connections, and what it measured."""

    target: str  # "direct" or "nginx"
    scenario: str
    connections: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    requests: int
    errors: dict[str, int]
    # Server CPU (user + system) per request, in microseconds, by process kind.
    cpu_us_per_req: dict[str, float] = field(default_factory=dict)
