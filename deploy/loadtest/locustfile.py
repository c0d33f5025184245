"""Locust journeys of `make loadtest` (started by deploy/loadtest/run.py, which creates the
accounts and reads the summary this file writes).

Each virtual user owns one account made for the run and repeats a realistic session: log in,
read /model, a few predictions, a batch, /users/me, refresh, predict with the new token, log
out, then confirm that the logged-out access and refresh tokens are refused (401). Every
response is checked; a wrong status or body is a failure. A 429 is the rate limiter doing
its job: it is checked (Retry-After and RateLimit headers present), reported under its own
name (`... [429]`) and counted apart, never as a failure. Any 5xx is a failure.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from locust import HttpUser, between, events, task
from locust.clients import ResponseContextManager
from locust.env import Environment

ACCOUNTS_FILE = os.environ.get("LOADTEST_ACCOUNTS_FILE", "")
SUMMARY_FILE = os.environ.get("LOADTEST_SUMMARY_FILE", "")
# Requests measured against the login budget instead of the API budget: Argon2id password
# hashing is slow on purpose (tens to hundreds of ms), and would otherwise set the API's p99.
LOGIN_NAME = "POST /token"
# Seconds a user pauses between steps (run.py --think); journeys are 2.5x that apart.
THINK = tuple(float(v) for v in os.environ.get("LOADTEST_THINK", "0.4,1.2").split(","))[:2]
FAILURE_SAMPLES = 30

_counter = itertools.count()
_expected_429: Counter[str] = Counter()
_server_errors: Counter[str] = Counter()
_failed_checks: Counter[str] = Counter()
_failure_samples: list[str] = []
_journeys: Counter[str] = Counter()


def _accounts() -> list[dict[str, str]]:
    if not ACCOUNTS_FILE:
        raise RuntimeError("LOADTEST_ACCOUNTS_FILE is not set: run deploy/loadtest/run.py")
    accounts: list[dict[str, str]] = json.loads(Path(ACCOUNTS_FILE).read_text())
    return accounts


ACCOUNTS = _accounts() if ACCOUNTS_FILE else []


class CheckFailed(Exception):
    """A journey step got an answer the contract does not allow; the journey stops."""


class RateLimitedStep(Exception):
    """A step was answered 429: expected; the journey stops and starts over later."""


def _random_row() -> list[float]:
    """An in-range Iris-like measurement (cm)."""
    return [
        round(random.uniform(4.3, 7.9), 1),
        round(random.uniform(2.0, 4.4), 1),
        round(random.uniform(1.0, 6.9), 1),
        round(random.uniform(0.1, 2.5), 1),
    ]


class Session(HttpUser):
    """One client with its own account (and, unless run.py says otherwise, its own IP)."""

    wait_time = between(THINK[0] * 2.5, THINK[1] * 2.5)

    def on_start(self) -> None:
        if not ACCOUNTS:
            raise RuntimeError("no accounts: run deploy/loadtest/run.py")
        self.account = ACCOUNTS[next(_counter) % len(ACCOUNTS)]
        self.base_headers = {}
        if self.account.get("ip"):
            # The API trusts X-Forwarded-For from 127.0.0.1 (TRUSTED_PROXIES), as it does
            # from nginx: each virtual user is then a distinct client, as in real traffic.
            self.base_headers["X-Forwarded-For"] = self.account["ip"]
        self.classes: list[str] = []
        self.version = ""

    # ------------------------------------------------------------------ helpers

    def think(self) -> None:
        time.sleep(random.uniform(*THINK))  # gevent's sleep: locust patches time

    def call(
        self,
        method: str,
        path: str,
        name: str,
        expect: int,
        check: Callable[[Any], str | None] | None = None,
        token: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """One request with its checks; returns the JSON body (or None)."""
        headers = dict(self.base_headers)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        with self.client.request(
            method, path, name=name, headers=headers, catch_response=True, **kwargs
        ) as response:
            return self._judge(response, name, expect, check)

    def _judge(
        self,
        response: ResponseContextManager,
        name: str,
        expect: int,
        check: Callable[[Any], str | None] | None,
    ) -> Any:
        status = response.status_code
        if status == 429:
            missing = [h for h in ("Retry-After", "RateLimit") if h not in response.headers]
            if missing:
                return self._fail(response, name, f"429 without {', '.join(missing)}")
            cast(dict[str, Any], response.request_meta)["name"] = f"{name} [429]"
            response.success()  # type: ignore[no-untyped-call]
            _expected_429[name] += 1
            raise RateLimitedStep(response.headers["Retry-After"])
        if status >= 500 or status == 0:
            _server_errors[name] += 1
            return self._fail(response, name, f"server error {status}: {response.text[:200]}")
        if status != expect:
            return self._fail(
                response, name, f"expected {expect}, got {status}: {response.text[:200]}"
            )
        body = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                return self._fail(response, name, "response is not JSON")
        problem = check(body) if check is not None else None
        if problem:
            return self._fail(response, name, problem)
        response.success()  # type: ignore[no-untyped-call]
        return body

    def _fail(self, response: ResponseContextManager, name: str, message: str) -> None:
        response.failure(message)  # type: ignore[no-untyped-call]
        _failed_checks[name] += 1
        if len(_failure_samples) < FAILURE_SAMPLES:
            _failure_samples.append(f"{name}: {message}")
        raise CheckFailed(message)

    def _check_prediction(self, item: Any) -> str | None:
        if not isinstance(item, dict) or item.get("label") not in self.classes:
            return f"unexpected prediction {item!r}"
        probabilities = item.get("probabilities", {})
        if set(probabilities) != set(self.classes):
            return f"probabilities for {sorted(probabilities)}"
        if not math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-6):
            return "probabilities do not sum to 1"
        if self.classes[item["prediction"]] != item["label"]:
            return "prediction index and label disagree"
        return None

    def _check_single(self, body: Any) -> str | None:
        if body.get("model_version") != self.version:
            return f"model_version {body.get('model_version')!r} != /model {self.version!r}"
        return self._check_prediction(body)

    # ------------------------------------------------------------------ the journey

    @task
    def journey(self) -> None:
        _journeys["started"] += 1
        try:
            self._journey()
        except RateLimitedStep as limited:
            _journeys["stopped by a 429"] += 1
            # A well-behaved client honours Retry-After (capped so a run stays responsive).
            time.sleep(min(float(str(limited)), 15.0))
        except CheckFailed:
            _journeys["failed"] += 1
        else:
            _journeys["completed"] += 1

    def _journey(self) -> None:
        form = {
            "grant_type": "password",
            "username": self.account["username"],
            "password": self.account["password"],
        }
        tokens = self.call("POST", "/token", LOGIN_NAME, 200, _has_tokens, data=form)
        access, refresh = tokens["access_token"], tokens["refresh_token"]
        self.think()

        model = self.call("GET", "/model", "GET /model", 200, _has_model, token=access)
        self.classes, self.version = list(model["class_names"]), model["version"]
        self.think()

        for _ in range(random.randint(2, 5)):
            body = {"data": _random_row()}
            self.call(
                "POST", "/predict", "POST /predict", 200, self._check_single, access, json=body
            )
            self.think()

        rows = [_random_row() for _ in range(random.randint(2, 64))]

        def batch_ok(body: Any) -> str | None:
            predictions = body.get("predictions")
            if not isinstance(predictions, list) or len(predictions) != len(rows):
                return f"expected {len(rows)} predictions"
            return next(filter(None, map(self._check_prediction, predictions)), None)

        self.call(
            "POST", "/predict/batch", "POST /predict/batch", 200, batch_ok, access,
            json={"instances": rows},
        )  # fmt: skip
        self.think()

        def me_ok(body: Any) -> str | None:
            if body.get("username") != self.account["username"]:
                return f"/users/me names {body.get('username')!r}"
            return None if "predict" in body.get("scopes", []) else "scope predict missing"

        self.call("GET", "/users/me", "GET /users/me", 200, me_ok, token=access)
        self.think()

        def rotated(body: Any) -> str | None:
            if problem := _has_tokens(body):
                return problem
            if body["access_token"] == access or body["refresh_token"] == refresh:
                return "refresh returned the same tokens"
            return None

        fresh = self.call(
            "POST", "/token", "POST /token (refresh)", 200, rotated,
            data={"grant_type": "refresh_token", "refresh_token": refresh},
        )  # fmt: skip
        access, refresh = fresh["access_token"], fresh["refresh_token"]
        self.call(
            "POST", "/predict", "POST /predict", 200, self._check_single, access,
            json={"data": _random_row()},
        )  # fmt: skip
        self.think()

        self.call(
            "POST", "/logout", "POST /logout", 204, token=access, json={"refresh_token": refresh}
        )
        # The logged-out tokens must be refused, at once, on whichever instance answers.
        self.call(
            "GET", "/users/me", "GET /users/me (logged-out token)", 401, _bearer_challenge,
            token=access,
        )  # fmt: skip
        self.call(
            "POST", "/token", "POST /token (refresh, logged-out token)", 400, _invalid_grant,
            data={"grant_type": "refresh_token", "refresh_token": refresh},
        )  # fmt: skip


def _invalid_grant(body: Any) -> str | None:
    """RFC 6749 §5.2: a dead refresh token is an `invalid_grant`."""
    if not isinstance(body, dict) or body.get("error") != "invalid_grant":
        return "no invalid_grant error"
    return None


def _has_tokens(body: Any) -> str | None:
    if not isinstance(body, dict) or not body.get("access_token") or not body.get("refresh_token"):
        return "no access_token/refresh_token"
    if body.get("token_type") != "bearer":
        return "token_type is not bearer"
    return None


def _has_model(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "not an object"
    missing = {"version", "sha256", "class_names", "feature_names"} - set(body)
    return f"missing {sorted(missing)}" if missing else None


def _bearer_challenge(body: Any) -> str | None:
    if not isinstance(body, dict) or "detail" not in body:
        return "401 without a JSON detail"
    return None


# ---------------------------------------------------------------------- summary for run.py


def _percentile(times: Counter[int], total: int, fraction: float) -> float:
    """Locust's own (rounded) response-time histogram, merged over several request names."""
    if total == 0:
        return 0.0
    rank = math.ceil(total * fraction)
    seen = 0
    for value in sorted(times):
        seen += times[value]
        if seen >= rank:
            return float(value)
    return float(max(times))


def _write_summary(environment: Environment, **_: Any) -> None:
    """Everything run.py needs to decide the exit status, as JSON."""
    if not SUMMARY_FILE or environment.stats is None:
        return
    endpoints = {}
    api_times: Counter[int] = Counter()
    api_total = 0
    for (name, method), entry in sorted(environment.stats.entries.items()):
        endpoints[f"{name}"] = {
            "method": method,
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "rps": round(entry.total_rps, 2),
            "p50_ms": entry.get_response_time_percentile(0.5),
            "p95_ms": entry.get_response_time_percentile(0.95),
            "p99_ms": entry.get_response_time_percentile(0.99),
            "max_ms": round(entry.max_response_time or 0, 1),
        }
        if name.endswith("[429]") or name == LOGIN_NAME:
            continue
        api_times.update(entry.response_times)
        api_total += entry.num_requests
    login = environment.stats.entries.get((LOGIN_NAME, "POST"))
    total = environment.stats.total
    summary = {
        "finished_at": time.time(),
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rps": round(total.total_rps, 2),
        "api_requests": api_total,
        "api_p50_ms": _percentile(api_times, api_total, 0.50),
        "api_p99_ms": _percentile(api_times, api_total, 0.99),
        "login_p99_ms": login.get_response_time_percentile(0.99) if login else 0.0,
        "expected_429": dict(_expected_429),
        "server_errors": dict(_server_errors),
        "failed_checks": dict(_failed_checks),
        "failure_samples": _failure_samples,
        "journeys": dict(_journeys),
        "endpoints": endpoints,
    }
    Path(SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")


events.quitting.add_listener(_write_summary)  # type: ignore[no-untyped-call]
