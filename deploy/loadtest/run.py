"""`make loadtest`: locust, headless, against --url, with accounts made for the run.

When nothing answers at --url (a loopback address), starts `deploy/cluster.py up` on that
port and stops it afterwards, whatever happens (failure, Ctrl-C, SIGTERM). Creates one
predict account per virtual user through the admin API (admin credentials from
ADMIN_USERNAME / ADMIN_PASSWORD[_FILE] in the environment, else from --env-file, the `.env`
that `make run` and `make cluster` use) and deletes them afterwards. Writes
reports/loadtest.html (charts), reports/loadtest_*.csv, locust's final statistics
(reports/loadtest_stats.json: not printed, the summary table below has them) and
reports/loadtest.json. Prints one table.

Exit status: non-zero on any 5xx, any failed journey check, an API p99 above
--p99-budget-ms, a login p99 above --login-p99-budget-ms, or when the run itself failed.
429s are expected outcomes: counted and reported, never failures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import httpx
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
CLUSTER = ROOT / "deploy" / "cluster.py"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


class RunError(Exception):
    """The load test could not run (not a failed check)."""


def seconds(text: str) -> int:
    """Locust's duration syntax (90, 90s, 1m30s, 1h)."""
    match = DURATION_RE.match(text.strip())
    if not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: use e.g. 60s, 2m, 1m30s")
    h, m, s = (int(g or 0) for g in match.groups())
    return h * 3600 + m * 60 + s


def answering(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def admin_credentials(env_file: Path) -> tuple[str, str]:
    """The process environment wins over the .env file, as for the service itself."""
    from_file = dotenv_values(env_file) if env_file.exists() else {}

    def get(name: str) -> str | None:
        for source in (os.environ, from_file):
            if source.get(name):
                return source[name]
            if path := source.get(f"{name}_FILE"):
                return Path(path).read_text(encoding="utf-8").strip()
        return None

    username, password = get("ADMIN_USERNAME"), get("ADMIN_PASSWORD")
    if not username or not password:
        raise RunError(
            f"admin credentials needed: set ADMIN_USERNAME and ADMIN_PASSWORD (or _FILE), "
            f"or have them in {env_file}"
        )
    return username, password


class Admin:
    """The admin API, with a token renewed when it runs out."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=60)
        self.username, self.password = username, password
        self.token = ""
        self.login()

    def login(self) -> None:
        form = {"grant_type": "password", "username": self.username, "password": self.password}
        response = self.client.post("/token", data=form)
        if response.status_code != 200:
            raise RunError(f"admin login failed: {response.status_code} {response.text[:200]}")
        self.token = response.json()["access_token"]

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self.token}"}
            response = self.client.request(method, path, headers=headers, **kwargs)
            if response.status_code != 401 or attempt == 2:
                return response
            self.login()
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()


def create_accounts(
    admin: Admin, count: int, distinct_ips: bool, created: list[dict[str, str]]
) -> None:
    """One predict account per virtual user, appended to `created` as soon as it exists (so
    that a failure half-way still deletes what was made)."""
    run_id = secrets.token_hex(3)

    def create(index: int) -> None:
        account = {
            "username": f"lt-{run_id}-{index:04d}",
            "password": secrets.token_urlsafe(18),
            # TEST-NET-2 (RFC 5737): documentation addresses, only ever a header value.
            "ip": f"198.51.{100 + index // 250}.{1 + index % 250}" if distinct_ips else "",
        }
        body = {"username": account["username"], "password": account["password"]}
        response = admin.request("POST", "/users", json=body | {"scopes": ["predict"]})
        if response.status_code != 201:
            raise RunError(f"creating {account['username']}: {response.status_code}")
        created.append(account)

    # Each creation hashes a password (Argon2id): a few at a time, not all at once.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create, range(count)))


def delete_accounts(admin: Admin, accounts: list[dict[str, str]]) -> int:
    """Delete every account of the run; returns how many could not be deleted."""
    left = 0
    for account in accounts:
        try:
            status = admin.request("DELETE", f"/users/{account['username']}").status_code
        except httpx.HTTPError:
            status = 0
        if status not in (204, 404):
            left += 1
    return left


def cluster(command: str, port: int) -> None:
    done = subprocess.run(
        [sys.executable, str(CLUSTER), command, "--port", str(port)],
        cwd=ROOT, timeout=240, check=False,
    )  # fmt: skip
    if done.returncode != 0 and command == "up":
        raise RunError(f"deploy/cluster.py up failed ({done.returncode})")


def run_locust(
    args: argparse.Namespace, accounts_file: Path, summary_file: Path
) -> subprocess.CompletedProcess[bytes]:
    out: Path = args.out
    env = os.environ | {
        "LOADTEST_ACCOUNTS_FILE": str(accounts_file),
        "LOADTEST_SUMMARY_FILE": str(summary_file),
        "LOADTEST_THINK": args.think,
    }
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
           "--host", args.url, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
           "--run-time", f"{args.duration}s", "--stop-timeout", "5",
           "--html", str(out / "loadtest.html"), "--csv", str(out / "loadtest"),
           # Locust's final tables would print the numbers print_summary prints once more:
           # with --json-file it writes them to a file instead (loadtest_stats.json).
           "--json-file", str(out / "loadtest_stats"),  # locust adds .json
           "--only-summary", "--loglevel", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    try:
        proc.wait(timeout=args.duration + 120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # locust still writes its reports on SIGINT
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode)


def verdict(summary: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Reasons to exit non-zero (empty: the run passed)."""
    reasons = []
    if summary["api_requests"] == 0:
        reasons.append("no API requests were made (beyond logins)")
    if summary["server_errors"]:
        reasons.append(f"5xx responses: {summary['server_errors']}")
    if summary["failed_checks"]:
        reasons.append(f"failed checks: {summary['failed_checks']}")
    if summary["api_p99_ms"] > args.p99_budget_ms:
        reasons.append(f"API p99 {summary['api_p99_ms']:.0f} ms > budget {args.p99_budget_ms} ms")
    if summary["login_p99_ms"] > args.login_p99_budget_ms:
        reasons.append(
            f"login p99 {summary['login_p99_ms']:.0f} ms > budget {args.login_p99_budget_ms} ms"
        )
    return reasons


def print_summary(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nloadtest: {args.users} users, {args.duration}s against {args.url}")
    print(f"{'endpoint':<44} {'reqs':>7} {'fail':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for name, e in summary["endpoints"].items():
        print(
            f"{name:<44} {e['requests']:>7} {e['failures']:>5} {e['p50_ms']:>7.0f} "
            f"{e['p99_ms']:>7.0f} {e['max_ms']:>7.0f}"
        )
    print(
        f"total {summary['requests']} requests ({summary['rps']:.1f} req/s); "
        f"API p50 {summary['api_p50_ms']:.0f} ms, p99 {summary['api_p99_ms']:.0f} ms "
        f"(budget {args.p99_budget_ms}); login p99 {summary['login_p99_ms']:.0f} ms "
        f"(budget {args.login_p99_budget_ms})"
    )
    expected = sum(summary["expected_429"].values())
    print(f"429 (expected, not failures): {expected} {summary['expected_429'] or ''}".rstrip())
    print(f"journeys: {summary['journeys']}")
    for sample in summary["failure_samples"]:
        print(f"  failure: {sample}")


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("LOADTEST_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--duration", type=seconds, default=60, help="e.g. 60s, 2m")
    parser.add_argument("--p99-budget-ms", type=float, default=250)
    parser.add_argument(
        "--login-p99-budget-ms",
        type=float,
        default=2000,
        help="POST /token hashes with Argon2id on purpose; it has its own budget",
    )
    parser.add_argument(
        "--think", default="0.4,1.2", help="min,max seconds a user pauses between steps"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports")
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env")
    parser.add_argument(
        "--same-client-ip",
        action="store_true",
        help="every user from 127.0.0.1 (default: one TEST-NET address each, via "
        "X-Forwarded-For, so per-IP limits see distinct clients)",
    )
    args = parser.parse_args(argv)
    args.url = args.url.rstrip("/")
    if args.users < 1 or args.duration < 1:
        parser.error("--users and --duration must be positive")
    try:
        low, high = (float(v) for v in args.think.split(","))
    except ValueError:
        parser.error("--think takes min,max seconds, e.g. 0.4,1.2")
    if not 0 <= low <= high:
        parser.error("--think needs 0 <= min <= max")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    args.out.mkdir(parents=True, exist_ok=True)
    summary_file = args.out / "loadtest.json"
    summary_file.unlink(missing_ok=True)
    started_cluster: int | None = None
    admin: Admin | None = None
    accounts: list[dict[str, str]] = []
    workdir = Path(tempfile.mkdtemp(prefix="loadtest-"))
    accounts_file = workdir / "accounts.json"
    try:
        if not answering(args.url):
            parts = urlsplit(args.url)
            if parts.hostname not in LOOPBACK or parts.port is None:
                raise RunError(f"nothing answers at {args.url} (and it is not a local port)")
            print(f"nothing answers at {args.url}: starting deploy/cluster.py up", flush=True)
            started_cluster = parts.port
            cluster("up", parts.port)
        admin = Admin(args.url, *admin_credentials(args.env_file))
        create_accounts(admin, args.users, not args.same_client_ip, accounts)
        fd = os.open(accounts_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(accounts, handle)
        print(f"created {len(accounts)} accounts; running locust for {args.duration}s", flush=True)
        started = time.monotonic()
        run_locust(args, accounts_file, summary_file)
        if not summary_file.exists():
            raise RunError("locust wrote no summary (see its output above)")
        summary = json.loads(summary_file.read_text())
        summary |= {
            "url": args.url,
            "users": args.users,
            "duration_s": args.duration,
            "wall_s": round(time.monotonic() - started, 1),
            "p99_budget_ms": args.p99_budget_ms,
            "login_p99_budget_ms": args.login_p99_budget_ms,
            "distinct_client_ips": not args.same_client_ip,
        }
        reasons = verdict(summary, args)
        summary["verdict"] = reasons or ["pass"]
        summary_file.write_text(json.dumps(summary, indent=2) + "\n")
        print_summary(summary, args)
        print(
            f"reports: {args.out / 'loadtest.html'}, {args.out}/loadtest_*.csv, "
            f"{args.out / 'loadtest_stats.json'}, {summary_file}"
        )
        if reasons:
            print("LOADTEST FAILED: " + "; ".join(reasons))
            return 1
        print("loadtest passed")
        return 0
    except (RunError, httpx.HTTPError) as exc:
        print(f"loadtest could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        if admin is not None:
            try:
                left = delete_accounts(admin, accounts)
                if left:
                    print(f"warning: {left} loadtest accounts could not be deleted")
            except (RunError, httpx.HTTPError) as exc:
                print(f"warning: deleting loadtest accounts failed: {exc}")
            admin.close()
        accounts_file.unlink(missing_ok=True)
        workdir.rmdir()
        if started_cluster is not None:
            print("stopping the cluster this run started", flush=True)
            cluster("down", started_cluster)


if __name__ == "__main__":
    sys.exit(main())
