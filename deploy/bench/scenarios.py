"""What the bench measures: the requests wrk sends, which target runs which, and the record
of one wrk run.

Shared by the modules that drive the runs (wrk.py, profiling.py) and the one that reports
them (report.py), so the scenario names and result fields have a single definition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from redis_stats import RedisUse

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
V2_BODY_JSON = json.dumps(V2_BODY).encode()
PREDICT_BODY = json.dumps({"data": ROWS[0]}).encode()

# The ceiling: the bare FastAPI app (ceiling_app.py) answering a constant to the same request.
CEILING_PREDICT = Scenario("ceiling POST /predict (constant)", "POST", "/predict", PREDICT_BODY,
                           auth=False)  # fmt: skip
HEALTHZ = Scenario("GET /healthz", "GET", "/healthz", None, auth=False)
PREDICT_SCENARIO = Scenario("POST /predict", "POST", "/predict", PREDICT_BODY, auth=True)
V2_SCENARIO = Scenario(
    "POST /v2/models/iris-rf/infer",
    "POST",
    "/v2/models/iris-rf/infer",
    V2_BODY_JSON,
    auth=True,
)
BATCH_SCENARIO = Scenario(
    "POST /predict/batch (64)",
    "POST",
    "/predict/batch",
    json.dumps({"instances": [ROWS[i % len(ROWS)] for i in range(64)]}).encode(),
    auth=True,
)
# MLServer's V2 infer of the same row and body (peers.py), no auth: it has none.
MLSERVER_INFER = Scenario(
    "MLServer V2 infer (adaptive batching)",
    "POST",
    "/v2/models/iris-rf/infer",
    V2_BODY_JSON,
    auth=False,
)

# What `--profile` can sample the workers under (`--profile-scenario`).
PROFILED = {"predict": PREDICT_SCENARIO, "v2": V2_SCENARIO, "batch": BATCH_SCENARIO}

# The service's own scenarios, in the order they run; /healthz (no auth, no Redis) is a
# reference row: what the service's middleware costs without the protections.
SCENARIOS = (HEALTHZ, PREDICT_SCENARIO, V2_SCENARIO, BATCH_SCENARIO)
CEILING, HEALTH, PREDICT, V2_INFER, BATCH, MLSERVER = (
    s.name
    for s in (CEILING_PREDICT, HEALTHZ, PREDICT_SCENARIO, V2_SCENARIO, BATCH_SCENARIO,
              MLSERVER_INFER)
)  # fmt: skip

# What each target runs in a round, in this order; a round runs every target's scenarios at
# one connection count back to back, then the next connection count. Through nginx only
# /predict (its goal); MLServer only its V2 infer.
TARGET_SCENARIOS: dict[str, tuple[Scenario, ...]] = {
    "ceiling": (CEILING_PREDICT,),
    "direct": SCENARIOS,
    "nginx": (PREDICT_SCENARIO,),
    "baseline": (HEALTHZ, PREDICT_SCENARIO, BATCH_SCENARIO),
    "mlserver": (MLSERVER_INFER,),
}


@dataclass
class Result:
    """One wrk run: where, what, how many connections, and what it measured."""

    target: str  # "ceiling", "direct", "baseline", "nginx" or "mlserver"
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
    round: int = 1
    # Redis's own account (INFO on every primary), for the service's runs.
    redis: RedisUse | None = None
