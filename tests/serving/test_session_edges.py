"""Sessions and login throttling over real gunicorn workers (each with its own verified-token
cache), where the security review found them wanting: replays at the clock rule's edge, and
guessing from many addresses."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from jose import jwt

from service.auth.tokens import LEEWAY_SECONDS
from tests.support.auth import bearer, login_sync
from tests.support.processes import GunicornFactory, GunicornProcess, RedisProcess
from tests.support.settings import ADMIN_PASSWORD, ADMIN_USERNAME

pytestmark = pytest.mark.slow

SHORT_LIVED = {
    "ACCESS_TOKEN_TTL_SECONDS": "5",
    "REFRESH_TOKEN_TTL_SECONDS": "5",
    "RATE_LIMIT_PUBLIC": "100000/minute",
    "RATE_LIMIT_LOGIN": "1000/minute",
}
THROTTLED = {
    "RATE_LIMIT_LOGIN": "5/minute",
    "RATE_LIMIT_LOGIN_USER": "6/minute",
    "RATE_LIMIT_LOGIN_IP": "1000/minute",
}
VICTIM_PASSWORD = "victim-password-for-tests"


@pytest.fixture(scope="module")
def short_lived(gunicorn_factory: GunicornFactory, module_redis: RedisProcess) -> GunicornProcess:
    return gunicorn_factory(module_redis.url, **SHORT_LIVED)


@pytest.fixture(scope="module")
def throttled(gunicorn_factory: GunicornFactory, module_redis: RedisProcess) -> GunicornProcess:
    """Trusts 127.0.0.1 as its proxy, so X-Forwarded-For names the client."""
    return gunicorn_factory(module_redis.url, **THROTTLED)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def _until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def _hammer(http: httpx.Client, call: str, url: str, token: str, until: float) -> list[int]:
    """Present `token` again and again (spread over both workers) until `until`."""
    codes = []
    while time.time() < until:
        if call == "refresh":
            form = {"grant_type": "refresh_token", "refresh_token": token}
            response = http.post(f"{url}/token", data=form)
        else:
            response = http.get(f"{url}/users/me", headers=bearer(token))
        codes.append(response.status_code)
    return codes


def test_a_rotated_refresh_token_is_refused_across_the_clock_edge(
    short_lived: GunicornProcess, http: httpx.Client
) -> None:
    """Finding 1: at exp + 5.1 s the used-token marker had expired while python-jose still
    took the token, and a replay got a fresh pair. Now it is refused at every moment."""
    url = short_lived.url
    tokens = login_sync(http, ADMIN_USERNAME, ADMIN_PASSWORD, base=url)
    old = tokens["refresh_token"]
    rotated = http.post(f"{url}/token/refresh", json={"refresh_token": old})
    assert rotated.status_code == 200
    exp = jwt.get_unverified_claims(old)["exp"]
    _until(exp + LEEWAY_SECONDS - 0.3)
    codes = _hammer(http, "refresh", url, old, until=exp + LEEWAY_SECONDS + 1.5)
    assert len(codes) > 20
    assert set(codes) == {400}, codes  # invalid_grant


def test_a_logged_out_access_token_is_refused_across_the_clock_edge(
    short_lived: GunicornProcess, http: httpx.Client
) -> None:
    """Finding 1: a logged-out access token was accepted once in the same window."""
    url = short_lived.url
    tokens = login_sync(http, ADMIN_USERNAME, ADMIN_PASSWORD, base=url)
    access = tokens["access_token"]
    # Both workers verify and cache the token first.
    assert set(_hammer(http, "me", url, access, until=time.time() + 0.5)) == {200}
    assert http.post(f"{url}/logout", headers=bearer(access)).status_code == 204
    exp = jwt.get_unverified_claims(access)["exp"]
    codes = _hammer(http, "me", url, access, until=exp + LEEWAY_SECONDS + 1.5)
    assert len(codes) > 20
    assert set(codes) == {401}, codes


def _first_presented(call: str, url: str, token: str, until: float) -> list[int]:
    """Present `token` until `until`, on a new connection each time, so that a worker that
    never verified (nor cached) the token gets it too."""
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as fresh:
        return _hammer(fresh, call, url, token, until)


def test_a_rotated_refresh_token_first_replayed_past_the_edge_is_refused(
    short_lived: GunicornProcess, http: httpx.Client
) -> None:
    """Finding 1 as found: the replay came only after the edge, to a worker meeting the
    token for the first time, once the used-token marker had expired."""
    url = short_lived.url
    old = login_sync(http, ADMIN_USERNAME, ADMIN_PASSWORD, base=url)["refresh_token"]
    assert http.post(f"{url}/token/refresh", json={"refresh_token": old}).status_code == 200
    exp = jwt.get_unverified_claims(old)["exp"]
    _until(exp + LEEWAY_SECONDS + 0.05)
    codes = _first_presented("refresh", url, old, until=exp + LEEWAY_SECONDS + 1.5)
    assert len(codes) > 20
    assert set(codes) == {400}, codes  # invalid_grant


def test_a_logged_out_access_token_first_presented_past_the_edge_is_refused(
    short_lived: GunicornProcess, http: httpx.Client
) -> None:
    url = short_lived.url
    access = login_sync(http, ADMIN_USERNAME, ADMIN_PASSWORD, base=url)["access_token"]
    assert http.post(f"{url}/logout", headers=bearer(access)).status_code == 204
    exp = jwt.get_unverified_claims(access)["exp"]
    _until(exp + LEEWAY_SECONDS + 0.05)
    codes = _first_presented("me", url, access, until=exp + LEEWAY_SECONDS + 1.5)
    assert len(codes) > 20
    assert set(codes) == {401}, codes


def _victim(url: str, http: httpx.Client, name: str) -> None:
    admin = login_sync(http, ADMIN_USERNAME, ADMIN_PASSWORD, base=url)
    body = {"username": name, "password": VICTIM_PASSWORD, "scopes": ["predict"]}
    created = http.post(f"{url}/users", json=body, headers=bearer(admin["access_token"]))
    assert created.status_code == 201, created.text


def _try(http: httpx.Client, url: str, name: str, password: str, client: str) -> int:
    form = {"grant_type": "password", "username": name, "password": password}
    response = http.post(f"{url}/token", data=form, headers={"X-Forwarded-For": client})
    return response.status_code


def test_an_ipv6_client_counts_as_its_64(throttled: GunicornProcess, http: httpx.Client) -> None:
    """Finding 4: 13 addresses of one /64 made 60 guesses and were never throttled."""
    url = throttled.url
    _victim(url, http, "v6-victim")
    addresses = [f"2001:db8:7:1::{i:x}" for i in range(1, 14)]
    codes = [_try(http, url, "v6-victim", "wrong-password-x", a) for a in addresses]
    assert codes[:5] == [400] * 5
    assert set(codes[5:]) == {429}


def test_failed_logins_are_limited_per_username_over_all_addresses(
    throttled: GunicornProcess, http: httpx.Client
) -> None:
    """Finding 4: no per-account limit across addresses."""
    url = throttled.url
    _victim(url, http, "v4-victim")
    guesses = [
        _try(http, url, "v4-victim", "wrong-password-x", f"198.51.100.{i}") for i in range(8)
    ]
    assert guesses == [400] * 6 + [429] * 2
    # Even the right password is refused while the account's failure budget is spent.
    assert _try(http, url, "v4-victim", VICTIM_PASSWORD, "203.0.113.77") == 429


def test_successful_logins_do_not_spend_the_failure_budget(
    throttled: GunicornProcess, http: httpx.Client
) -> None:
    url = throttled.url
    _victim(url, http, "busy-user")
    codes = [_try(http, url, "busy-user", VICTIM_PASSWORD, f"192.0.2.{i}") for i in range(12)]
    assert codes == [200] * 12
