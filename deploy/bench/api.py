"""The API-side set-up of a run: bench users whose rate limit cannot interfere, and their tokens.

Done through the service's own endpoints (admin login, /users), against whichever
deployment is being measured, and checked with one real POST /predict and one V2 infer per
token before wrk starts. With several users (`--bench-users`; 24 by default on a Redis
Cluster) bench.lua rotates their tokens request by request; on a cluster the users are
chosen so that their keys (one hash tag per user) fall evenly on its primaries.
"""

from __future__ import annotations

import itertools
import secrets
from collections import Counter
from collections.abc import Callable

import httpx
from errors import ToolError
from scenarios import ROWS, V2_BODY

BENCH_USER = "bench-user"
# A per-user override far above anything wrk can send (GCRA: one counter per user, whatever
# the rate).
BENCH_RATE = "100000/second"


def bench_usernames(count: int, primary_of: Callable[[str], str] | None = None) -> list[str]:
    """`bench-user` alone, or `count` names `bench-user-NNN`; with `primary_of` (the Redis
    primary that holds a user's keys), chosen so that the primaries hold as even a share of
    them as `count` allows (on a Redis Cluster, so the load spreads evenly over its slots)."""
    if count == 1:
        return [BENCH_USER]
    candidates = (f"{BENCH_USER}-{i:03d}" for i in range(1, 100 * count + 1))
    if primary_of is None:
        return list(itertools.islice(candidates, count))
    owners = {name: primary_of(name) for name in itertools.islice(candidates, 8 * count)}
    quota = -(-count // len(set(owners.values())))  # ceil: as even as `count` allows
    taken: Counter[str] = Counter()
    names: list[str] = []
    for name, owner in owners.items():
        if taken[owner] < quota and len(names) < count:
            taken[owner] += 1
            names.append(name)
    if len(names) < count:
        raise ToolError(f"could not spread {count} bench users over the Redis primaries")
    return names


def login(client: httpx.Client, username: str, password: str) -> str:
    response = client.post(
        "/token", data={"grant_type": "password", "username": username, "password": password}
    )
    if response.status_code != 200:
        raise ToolError(f"login as {username} failed: {response.status_code} {response.text}")
    token: str = response.json()["access_token"]
    return token


def _bench_user(client: httpx.Client, auth: dict[str, str], username: str) -> str:
    """Create (or reset) one bench user with the rate override; return its token."""
    password = secrets.token_urlsafe(24)
    body = {"username": username, "password": password, "scopes": ["predict"]}
    created = client.post("/users", json=body, headers=auth)
    if created.status_code == 409:
        created = client.patch(f"/users/{username}", json={"password": password}, headers=auth)
    if created.status_code not in (200, 201):
        raise ToolError(f"creating {username}: {created.status_code} {created.text}")
    patched = client.patch(f"/users/{username}", json={"rate_limit": BENCH_RATE}, headers=auth)
    if patched.status_code != 200:
        raise ToolError(f"rate override: {patched.status_code} {patched.text}")
    return login(client, username, password)


def check_tokens(url: str, tokens: list[str], *, v2: bool = True) -> None:
    """One POST /predict and (unless not `v2`: a revision without it) one V2 infer per
    token: each must answer 200."""
    probes: list[tuple[str, object]] = [("/predict", {"data": ROWS[0]})]
    if v2:
        probes.append(("/v2/models/iris-rf/infer", V2_BODY))
    with httpx.Client(base_url=url, timeout=30) as client:
        for token in tokens:
            for path, payload in probes:
                probe = client.post(
                    path, json=payload, headers={"Authorization": f"Bearer {token}"}
                )
                if probe.status_code != 200:
                    raise ToolError(f"probe POST {path}: {probe.status_code} {probe.text}")


def bench_tokens(
    url: str, admin: tuple[str, str], users: int = 1,
    primary_of: Callable[[str], str] | None = None, *, v2: bool = True,
) -> list[str]:  # fmt: skip
    """Create `users` bench users (spread over the Redis primaries by `primary_of`, see
    bench_usernames) with a rate override that cannot interfere; return their tokens, each
    checked with a real prediction."""
    names = bench_usernames(users, primary_of)
    with httpx.Client(base_url=url, timeout=30) as client:
        auth = {"Authorization": f"Bearer {login(client, *admin)}"}
        tokens = [_bench_user(client, auth, name) for name in names]
    check_tokens(url, tokens, v2=v2)
    return tokens


def bench_token(url: str, admin: tuple[str, str]) -> str:
    """One bench user's token (`--profile`)."""
    return bench_tokens(url, admin, 1)[0]
