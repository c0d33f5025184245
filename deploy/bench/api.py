"""The API-side set-up of a run: a bench user whose rate limit cannot interfere, and its token.

Done through the service's own endpoints (admin login, /users), against whichever
deployment is being measured, and checked with one real POST /predict and one V2 infer before
wrk starts.
"""

from __future__ import annotations

import secrets

import httpx
from errors import ToolError
from scenarios import ROWS, V2_BODY

BENCH_USER = "bench-user"
# A per-user override far above anything wrk can send, with a short window so the sliding
# window's sorted set stays as small as a real user's (a day's window would hold millions).
BENCH_RATE = "100000/second"


def login(client: httpx.Client, username: str, password: str) -> str:
    response = client.post(
        "/token", data={"grant_type": "password", "username": username, "password": password}
    )
    if response.status_code != 200:
        raise ToolError(f"login as {username} failed: {response.status_code} {response.text}")
    token: str = response.json()["access_token"]
    return token


def bench_token(url: str, admin: tuple[str, str]) -> str:
    """Create the bench user with a rate override that cannot interfere; return its token."""
    password = secrets.token_urlsafe(24)
    with httpx.Client(base_url=url, timeout=30) as client:
        auth = {"Authorization": f"Bearer {login(client, *admin)}"}
        body = {"username": BENCH_USER, "password": password, "scopes": ["predict"]}
        created = client.post("/users", json=body, headers=auth)
        if created.status_code == 409:
            created = client.patch(
                f"/users/{BENCH_USER}", json={"password": password}, headers=auth
            )
        if created.status_code not in (200, 201):
            raise ToolError(f"creating {BENCH_USER}: {created.status_code} {created.text}")
        patched = client.patch(
            f"/users/{BENCH_USER}", json={"rate_limit": BENCH_RATE}, headers=auth
        )
        if patched.status_code != 200:
            raise ToolError(f"rate override: {patched.status_code} {patched.text}")
        token = login(client, BENCH_USER, password)
        auth = {"Authorization": f"Bearer {token}"}
        probes: list[tuple[str, object]] = [
            ("/predict", {"data": ROWS[0]}),
            ("/v2/models/iris-rf/infer", V2_BODY),
        ]
        for path, payload in probes:
            probe = client.post(path, json=payload, headers=auth)
            if probe.status_code != 200:
                raise ToolError(f"probe POST {path}: {probe.status_code} {probe.text}")
        return token
