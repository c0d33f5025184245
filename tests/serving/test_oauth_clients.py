"""Real OAuth 2.0 client libraries against gunicorn over HTTP: authlib (requests and httpx
sessions), requests-oauthlib's LegacyApplicationClient, and retry policies that wait out a
429's Retry-After on POST.

The protocol request by request: tests/api/routes/test_oauth.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from oauthlib.oauth2 import LegacyApplicationClient
from oauthlib.oauth2.rfc6749.errors import (
    InsecureTransportError,
    InvalidGrantError,
    InvalidScopeError,
    OAuth2Error,
    TemporarilyUnavailableError,
)
from requests.adapters import HTTPAdapter
from requests_oauthlib import OAuth2Session as OAuthlibSession
from urllib3.util.retry import Retry

from tests.support.processes import REPO_ROOT, GunicornFactory, GunicornProcess, RedisProcess
from tests.support.settings import ADMIN_PASSWORD, ADMIN_USERNAME, GENEROUS_RATES

pytestmark = pytest.mark.slow

ACCESS_TTL = 5  # seconds: the shortest the settings allow
CLIENT_ID = "my-cli"
# authlib takes a token for expired `leeway` seconds early (60 by default): more than
# ACCESS_TTL, so every token would look expired from the start.
LEEWAY = 1
PREDICT_BODY = {"data": [5.1, 3.5, 1.4, 0.2]}
RATES = {name.upper(): rate for name, rate in GENEROUS_RATES.items()}


@pytest.fixture(scope="module")
def server(gunicorn_factory: GunicornFactory, module_redis: RedisProcess) -> GunicornProcess:
    return gunicorn_factory(module_redis.url, **RATES, ACCESS_TOKEN_TTL_SECONDS=str(ACCESS_TTL))


@pytest.fixture(scope="module")
def limited_server(
    gunicorn_factory: GunicornFactory, module_redis: RedisProcess
) -> GunicornProcess:
    """Two predictions per second per user, two failed logins per second per username:
    the third in a second is a 429."""
    limits = {"RATE_LIMIT_PREDICT": "2/second", "RATE_LIMIT_LOGIN_USER": "2/second"}
    return gunicorn_factory(module_redis.url, **(RATES | limits))


@pytest.fixture
def insecure_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """oauthlib refuses http:// URLs, loopback ones too; these servers speak plain HTTP."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")


def _live(server: GunicornProcess, access_token: str) -> int:
    headers = {"Authorization": f"Bearer {access_token}"}
    return httpx.get(f"{server.url}/users/me", headers=headers).status_code


# authlib


def test_authlib_password_grant(server: GunicornProcess) -> None:
    with OAuth2Session(client_id=CLIENT_ID, leeway=LEEWAY) as session:
        token = session.fetch_token(
            f"{server.url}/token", username=ADMIN_USERNAME, password=ADMIN_PASSWORD
        )
        assert token["token_type"] == "bearer"
        assert token["expires_in"] == ACCESS_TTL
        assert token["expires_at"] > time.time()
        assert token["scope"] == "admin predict"
        me = session.get(f"{server.url}/users/me")
        assert me.status_code == 200
        assert me.json()["username"] == ADMIN_USERNAME

        with pytest.raises(OAuthError) as wrong:
            session.fetch_token(f"{server.url}/token", username=ADMIN_USERNAME, password="nope")
        assert wrong.value.error == "invalid_grant"
        assert wrong.value.description == "Incorrect username or password"
        with pytest.raises(OAuthError) as scope:
            session.fetch_token(
                f"{server.url}/token",
                username=ADMIN_USERNAME,
                password=ADMIN_PASSWORD,
                scope="superuser",
            )
        assert scope.value.error == "invalid_scope"
    # With no client_id at all authlib sends `client_id=None`: accepted and ignored too.
    with OAuth2Session(leeway=LEEWAY) as anonymous:
        anonymous.fetch_token(
            f"{server.url}/token", username=ADMIN_USERNAME, password=ADMIN_PASSWORD
        )


def test_authlib_refresh_and_reuse_of_a_rotated_token(server: GunicornProcess) -> None:
    with OAuth2Session(client_id=CLIENT_ID, leeway=LEEWAY) as session:
        first = session.fetch_token(
            f"{server.url}/token", username=ADMIN_USERNAME, password=ADMIN_PASSWORD
        )
        second = session.refresh_token(f"{server.url}/token")
        assert second["refresh_token"] != first["refresh_token"]
        assert session.token["access_token"] == second["access_token"]
        assert session.get(f"{server.url}/users/me").status_code == 200
        with pytest.raises(OAuthError) as reuse:
            session.refresh_token(f"{server.url}/token", refresh_token=first["refresh_token"])
        assert reuse.value.error == "invalid_grant"
        # Reuse means a stolen token: the whole session ends, the current tokens too.
        assert _live(server, second["access_token"]) == 401
        with pytest.raises(OAuthError, match="invalid_grant"):
            session.refresh_token(f"{server.url}/token")


@pytest.mark.parametrize("hint", ["refresh_token", "access_token"])
def test_authlib_revoke_token_ends_the_session(server: GunicornProcess, hint: str) -> None:
    with OAuth2Session(client_id=CLIENT_ID, leeway=LEEWAY) as session:
        token = session.fetch_token(
            f"{server.url}/token", username=ADMIN_USERNAME, password=ADMIN_PASSWORD
        )
        assert session.get(f"{server.url}/users/me").status_code == 200
        response = session.revoke_token(
            f"{server.url}/revoke", token=token[hint], token_type_hint=hint
        )
        assert response.status_code == 200
        assert session.get(f"{server.url}/users/me").status_code == 401
        with pytest.raises(OAuthError, match="invalid_grant"):
            session.refresh_token(f"{server.url}/token")
        # Unknown tokens are a 200 as well (RFC 7009 §2.2): nothing to learn from it.
        assert session.revoke_token(f"{server.url}/revoke", token="junk").status_code == 200


async def test_authlib_async_client(server: GunicornProcess) -> None:
    async with AsyncOAuth2Client(client_id=CLIENT_ID, leeway=LEEWAY) as client:
        token = await client.fetch_token(
            f"{server.url}/token", username=ADMIN_USERNAME, password=ADMIN_PASSWORD
        )
        me = await client.get(f"{server.url}/users/me")
        assert me.json()["username"] == ADMIN_USERNAME
        with pytest.raises(OAuthError) as wrong:
            await client.fetch_token(
                f"{server.url}/token", username=ADMIN_USERNAME, password="nope"
            )
        assert wrong.value.error == "invalid_grant"
        refreshed = await client.refresh_token(f"{server.url}/token")
        assert refreshed["refresh_token"] != token["refresh_token"]
        revoked = await client.revoke_token(
            f"{server.url}/revoke",
            token=refreshed["refresh_token"],
            token_type_hint="refresh_token",
        )
        assert revoked.status_code == 200
        assert (await client.get(f"{server.url}/users/me")).status_code == 401


# requests-oauthlib


def test_requests_oauthlib_needs_https_or_the_insecure_switch(server: GunicornProcess) -> None:
    session = OAuthlibSession(client=LegacyApplicationClient(client_id=CLIENT_ID))
    with pytest.raises(InsecureTransportError):
        session.fetch_token(f"{server.url}/token", username=ADMIN_USERNAME, password="x")


@pytest.mark.usefixtures("insecure_transport")
def test_requests_oauthlib_legacy_application_client(server: GunicornProcess) -> None:
    with OAuthlibSession(client=LegacyApplicationClient(client_id=CLIENT_ID)) as session:
        # Its default client authentication: HTTP Basic `my-cli:` (an empty secret).
        token = session.fetch_token(
            f"{server.url}/token", username=ADMIN_USERNAME, password=ADMIN_PASSWORD
        )
        assert token["scope"] == ["admin", "predict"]  # oauthlib splits it
        assert session.get(f"{server.url}/users/me").json()["username"] == ADMIN_USERNAME
        # A refresh carries no client identity at all.
        refreshed = session.refresh_token(f"{server.url}/token")
        assert refreshed["refresh_token"] != token["refresh_token"]
        assert session.get(f"{server.url}/users/me").status_code == 200
        with pytest.raises(InvalidGrantError) as reuse:
            session.refresh_token(f"{server.url}/token", refresh_token=token["refresh_token"])
        assert reuse.value.status_code == 400
        with pytest.raises(InvalidGrantError) as wrong:
            session.fetch_token(f"{server.url}/token", username=ADMIN_USERNAME, password="nope")
        assert wrong.value.description == "Incorrect username or password"
        with pytest.raises(InvalidScopeError):
            session.fetch_token(
                f"{server.url}/token",
                username=ADMIN_USERNAME,
                password=ADMIN_PASSWORD,
                scope=["superuser"],
            )
        # The id in the body instead of Basic (include_client_id=True) works the same.
        session.fetch_token(
            f"{server.url}/token",
            username=ADMIN_USERNAME,
            password=ADMIN_PASSWORD,
            include_client_id=True,
        )


@pytest.mark.usefixtures("insecure_transport")
def test_requests_oauthlib_narrows_the_scope_given_to_its_client(server: GunicornProcess) -> None:
    """The scope to ask for goes to LegacyApplicationClient: the session's own `scope=` is
    not sent with the password grant, yet the answer is checked against it (oauthlib then
    raises Warning("Scope has changed ..."))."""
    client = LegacyApplicationClient(client_id=CLIENT_ID, scope=["predict"])
    with OAuthlibSession(client=client) as session:
        token = session.fetch_token(
            f"{server.url}/token", username=ADMIN_USERNAME, password=ADMIN_PASSWORD
        )
        assert token["scope"] == ["predict"]
        assert session.get(f"{server.url}/users").status_code == 403
        assert session.refresh_token(f"{server.url}/token")["scope"] == ["predict"]
    unsent = OAuthlibSession(client=LegacyApplicationClient(client_id=CLIENT_ID), scope=["predict"])
    with unsent, pytest.raises(Warning, match="Scope has changed"):
        unsent.fetch_token(f"{server.url}/token", username=ADMIN_USERNAME, password=ADMIN_PASSWORD)


# Automatic refresh, all three clients: one wait serves them all.


@pytest.mark.usefixtures("insecure_transport")
async def test_clients_refresh_an_expired_access_token_by_themselves(
    server: GunicornProcess,
) -> None:
    token_url, me_url = f"{server.url}/token", f"{server.url}/users/me"
    updates: dict[str, list[dict[str, Any]]] = {"sync": [], "async": [], "oauthlib": []}

    def sync_update(token: dict[str, Any], refresh_token: str | None = None, **_: Any) -> None:
        updates["sync"].append({"token": dict(token), "old_refresh_token": refresh_token})

    async def async_update(
        token: dict[str, Any], refresh_token: str | None = None, **_: Any
    ) -> None:
        updates["async"].append({"token": dict(token), "old_refresh_token": refresh_token})

    def oauthlib_update(token: dict[str, Any]) -> None:
        updates["oauthlib"].append({"token": dict(token)})

    sync = OAuth2Session(
        client_id=CLIENT_ID, token_endpoint=token_url, leeway=LEEWAY, update_token=sync_update
    )
    async_client = AsyncOAuth2Client(
        client_id=CLIENT_ID, token_endpoint=token_url, leeway=LEEWAY, update_token=async_update
    )
    oauthlib = OAuthlibSession(
        client=LegacyApplicationClient(client_id=CLIENT_ID),
        auto_refresh_url=token_url,
        auto_refresh_kwargs={"client_id": CLIENT_ID},
        token_updater=oauthlib_update,
    )
    credentials = {"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
    first = {
        "sync": sync.fetch_token(token_url, **credentials),
        "async": await async_client.fetch_token(token_url, **credentials),
        "oauthlib": oauthlib.fetch_token(token_url, **credentials),
    }
    try:
        # Wait until the server refuses the first access tokens (the clock rule adds its
        # leeway to `exp`), so what follows really runs on refreshed tokens.
        deadline = time.monotonic() + 3 * ACCESS_TTL + 5
        while any(_live(server, t["access_token"]) != 401 for t in first.values()):
            assert time.monotonic() < deadline, "the access tokens never expired"
            await asyncio.sleep(0.5)

        assert sync.get(me_url).status_code == 200
        assert (await async_client.get(me_url)).status_code == 200
        assert oauthlib.get(me_url).status_code == 200
        for name, old in first.items():
            (update,) = updates[name]
            new = update["token"]
            assert new["access_token"] != old["access_token"], name
            assert new["refresh_token"] != old["refresh_token"], name
            if name != "oauthlib":  # authlib also says which refresh token was replaced
                assert update["old_refresh_token"] == old["refresh_token"]
        assert sync.token["access_token"] == updates["sync"][0]["token"]["access_token"]
    finally:
        sync.close()
        await async_client.aclose()
        oauthlib.close()


# Retrying a 429 on POST, as long as Retry-After says.


def _login(server: GunicornProcess) -> dict[str, str]:
    response = httpx.post(
        f"{server.url}/token",
        data={"grant_type": "password", "username": ADMIN_USERNAME, "password": ADMIN_PASSWORD},
    )
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_without_a_retry_policy_the_third_prediction_is_a_429(
    limited_server: GunicornProcess,
) -> None:
    headers = _login(limited_server)
    time.sleep(1)  # a fresh one-second window
    with httpx.Client(base_url=limited_server.url, headers=headers) as client:
        answers = [client.post("/predict", json=PREDICT_BODY) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert answers[-1].headers["retry-after"] == "1"


def test_urllib3_retry_waits_out_retry_after_on_post(limited_server: GunicornProcess) -> None:
    retry = Retry(
        total=4,
        connect=3,
        read=0,
        status=3,
        status_forcelist=[429, 503],
        allowed_methods=None,  # every method: urllib3's default list leaves out POST
        respect_retry_after_header=True,
        retry_after_max=60,
        backoff_factor=0.5,
        raise_on_status=False,
    )
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.headers.update(_login(limited_server))
        started = time.monotonic()
        answers = [
            session.post(f"{limited_server.url}/predict", json=PREDICT_BODY) for _ in range(5)
        ]
        elapsed = time.monotonic() - started
    assert [r.status_code for r in answers] == [200] * 5
    waited = [r.raw.retries.history for r in answers if r.raw.retries.history]
    assert waited, "no answer was retried: the limit never bit"
    assert all(attempt.status == 429 for history in waited for attempt in history)
    assert elapsed >= 0.9 * len([a for h in waited for a in h])  # a Retry-After: 1 each


@pytest.mark.usefixtures("insecure_transport")
def test_a_throttled_login_is_an_error_the_clients_raise(limited_server: GunicornProcess) -> None:
    """The token endpoint's 429 is an OAuth error: authlib would otherwise take any JSON
    body for a token, and requests-oauthlib would raise MissingTokenError."""
    url = f"{limited_server.url}/token"
    authlib_errors = []
    with OAuth2Session(client_id=CLIENT_ID, leeway=LEEWAY) as session:
        for _ in range(3):
            with pytest.raises(OAuthError) as authlib_error:
                session.fetch_token(url, username="ghost-one", password="wrong-password")
            authlib_errors.append(authlib_error.value.error)
    assert authlib_errors == ["invalid_grant", "invalid_grant", "temporarily_unavailable"]
    assert "retry after 1 s" in authlib_error.value.description

    oauthlib_errors: list[type[Exception]] = []
    with OAuthlibSession(client=LegacyApplicationClient(client_id=CLIENT_ID)) as oauthlib:
        for _ in range(3):
            with pytest.raises(OAuth2Error) as oauthlib_error:
                oauthlib.fetch_token(url, username="ghost-two", password="wrong-password")
            oauthlib_errors.append(type(oauthlib_error.value))
    assert oauthlib_errors == [
        InvalidGrantError,
        InvalidGrantError,
        TemporarilyUnavailableError,
    ]
    assert "retry after 1 s" in oauthlib_error.value.description


def _readme(language: str) -> list[str]:
    """The code blocks of one language in the README's "Clients" section, before its
    subsections (the V2 one's run in tests/serving/test_v2_tritonclient.py)."""
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("\n## Clients\n")
    section = text[start : text.index("\n## ", start + 1)].split("\n### ")[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)


def _run_readme(code: str, name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": name}
    exec(compile(code, f"README.md ({name})", "exec"), namespace)  # noqa: S102 (our README)
    return namespace


@pytest.fixture(scope="module")
def reader(limited_server: GunicornProcess) -> tuple[str, str]:
    """A user of its own for the README's snippets: its predictions count apart from the
    admin's, against the same two-per-second limit."""
    username, password = "readme-reader", "readme-reader-password"
    response = httpx.post(
        f"{limited_server.url}/users",
        json={"username": username, "password": password, "scopes": ["predict"]},
        headers=_login(limited_server),
    )
    assert response.status_code == 201, response.text
    return username, password


@pytest.fixture
def readme_env(
    monkeypatch: pytest.MonkeyPatch, limited_server: GunicornProcess, reader: tuple[str, str]
) -> None:
    monkeypatch.setenv("API_URL", limited_server.url)
    monkeypatch.setenv("API_USERNAME", reader[0])
    monkeypatch.setenv("API_PASSWORD", reader[1])


def _refresh_status(server: GunicornProcess, refresh_token: str) -> int:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return httpx.post(f"{server.url}/token", data=form).status_code


def test_an_httpx_loop_waits_out_retry_after_on_post(limited_server: GunicornProcess) -> None:
    """The README's `post` helper (httpx itself retries connection failures only)."""
    (_, _, httpx_block) = _readme("python")
    post = _run_readme(httpx_block, "httpx")["post"]
    with httpx.Client(base_url=limited_server.url, headers=_login(limited_server)) as client:
        started = time.monotonic()
        answers = [post(client, "/predict", json=PREDICT_BODY) for _ in range(5)]
        elapsed = time.monotonic() - started
    assert [r.status_code for r in answers] == [200] * 5
    assert elapsed >= 0.9  # five predictions at two per second: at least one wait


@pytest.mark.usefixtures("readme_env", "insecure_transport")
def test_the_readme_python_snippets_run(
    limited_server: GunicornProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    authlib_block, oauthlib_block, _ = _readme("python")
    authlib_run = _run_readme(authlib_block, "authlib")
    assert capsys.readouterr().out == "setosa\n"
    token = authlib_run["client"].token
    assert _live(limited_server, token["access_token"]) == 401  # logged out
    assert _refresh_status(limited_server, token["refresh_token"]) == 400
    assert authlib_run["client"].adapters["http://"].max_retries is authlib_run["retry"]

    oauthlib_run = _run_readme(oauthlib_block, "requests-oauthlib")
    assert capsys.readouterr().out == "setosa\n"
    token = oauthlib_run["client"].token
    assert _live(limited_server, token["access_token"]) == 401
    assert _refresh_status(limited_server, token["refresh_token"]) == 400


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None, reason="needs curl and jq"
)
@pytest.mark.usefixtures("readme_env")
def test_the_readme_curl_snippet_runs(limited_server: GunicornProcess, tmp_path: Path) -> None:
    (block,) = _readme("sh")
    env = {name: os.environ[name] for name in ("PATH", "API_URL", "API_USERNAME", "API_PASSWORD")}

    def bash(script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = bash(block)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "{}"
    assert json.loads((tmp_path / "prediction.json").read_text())["label"] == "setosa"
    assert (tmp_path / "token.json").stat().st_mode & 0o077 == 0
    assert not (tmp_path / "token.new.json").exists()
    token = json.loads((tmp_path / "token.json").read_text())
    assert token["scope"] == "predict"  # the refreshed pair...
    assert _refresh_status(limited_server, token["refresh_token"]) == 400  # ...revoked

    # The same flags wait out the 429s of a POST (two predictions per second here).
    env["TOKEN"] = _login(limited_server)["Authorization"].removeprefix("Bearer ")
    started = time.monotonic()
    five = bash(
        "for i in 1 2 3 4 5; do curl -sS --fail-with-body --retry 3 -o prediction-$i.json"
        ' -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json"'
        """ -d '{"data": [5.1, 3.5, 1.4, 0.2]}' "$API_URL/predict"; done"""
    )
    assert five.returncode == 0, five.stderr
    assert time.monotonic() - started >= 0.9
    for i in range(1, 6):
        assert json.loads((tmp_path / f"prediction-{i}.json").read_text())["label"] == "setosa"
