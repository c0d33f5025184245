"""Admin commands: `python -m service users add|list|disable|enable|delete|...` and
`python -m service model package MODEL.joblib ...`.

Subcommands: users add, list, disable, enable, delete, set-password, revoke-tokens; model
package (writes the manifest that lets the service serve a classifier fitted elsewhere; it
needs no Redis and no settings).

Passwords come from an interactive prompt, or from standard input when it is not a
terminal (`printf '%s\\n' "$PW" | python -m service users add bob`); never from argv, where
other users of the machine could read them in the process list.

Which Redis: REDIS_URL from the environment, else from `.env`, else the Redis that `make run`
or `make cluster` started here and recorded (REDIS_RECORDS), while it runs. A recorded Redis
that no longer runs is an error rather than a silent fall-back to the default URL; the
Redis used is named on stderr unless REDIS_URL came from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import subprocess  # nosec B404 - `ps` only where there is no /proc, fixed arguments
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values

from service.auth.users import AdminChangeRefused
from service.infra.config import Settings, load_settings
from service.rules.accounts import check_password, check_scopes, normalize_username
from service.runtime import Runtime

# Where the runners that start a Redis record it (service/devserver.py REDIS_RECORD for
# `make run`; deploy/cluster.py for `make cluster`), relative to the working directory like
# `.env`; each is dotenv text with REDIS_URL (and REDIS_PASSWORD_FILE when its password is not
# `.env`'s REDIS_PASSWORD), next to the pidfile of that redis-server.
REDIS_RECORDS = (
    ("make run", Path("var/redis/client.env")),
    ("make cluster", Path("var/cluster/redis/client.env")),
)


@dataclass(frozen=True)
class RecordedRedis:
    """A Redis a runner recorded, and the pid of that redis-server if it still runs."""

    owner: str
    record: Path
    values: dict[str, str]
    pid: int | None

    @property
    def url(self) -> str:
        return self.values.get("REDIS_URL", "")


def _running_redis(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:  # no /proc: macOS
        ps = ["ps", "-o", "command=", "-p", str(pid)]
        command = subprocess.run(ps, capture_output=True, text=True, check=False).stdout  # noqa: S603  # nosec B603
    except OSError:
        return None
    return pid if "redis" in command else None


def recorded_redis(root: Path = Path()) -> list[RecordedRedis]:
    """The Redis servers recorded under `root` by `make run` and `make cluster`."""
    found = []
    for owner, relative in REDIS_RECORDS:
        record = root / relative
        if not record.is_file():
            continue
        values = {k: v for k, v in dotenv_values(record).items() if v}
        if "REDIS_URL" in values:
            pid = _running_redis(record.with_name("redis.pid"))
            found.append(RecordedRedis(owner, record, values, pid))
    return found


def shown_url(url: str) -> str:
    """`url` with any password in it masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    netloc += f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=netloc))


def choose_redis(environ: Mapping[str, str], env_file: Path = Path(".env")) -> dict[str, str]:
    """Variables to add to the environment so that the settings name the Redis to use, and
    say which on stderr; exits when the Redis recorded here no longer runs."""
    if "REDIS_URL" in environ:
        return {}
    from_file = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    if "REDIS_URL" in from_file:
        print(
            f"redis: {shown_url(from_file['REDIS_URL'])} (REDIS_URL in {env_file})", file=sys.stderr
        )
        return {}
    records = recorded_redis(env_file.parent)
    running = [r for r in records if r.pid is not None]
    if running:
        chosen = running[0]
        extra = {"REDIS_URL": chosen.url}
        password_file = chosen.values.get("REDIS_PASSWORD_FILE")
        if password_file and not {"REDIS_PASSWORD", "REDIS_PASSWORD_FILE"} & environ.keys():
            extra["REDIS_PASSWORD_FILE"] = password_file
        others = "".join(f"; {r.owner}'s runs too, at {r.url}" for r in running[1:])
        print(
            f"redis: {chosen.url} ({chosen.owner}'s redis-server, pid {chosen.pid}, recorded in "
            f"{chosen.record}{others}; set REDIS_URL to use another)",
            file=sys.stderr,
        )
        return extra
    if records:
        stale = records[0]
        raise SystemExit(
            f"error: the Redis {stale.owner} started ({stale.url}, recorded in {stale.record}) "
            f"is not running: start `{stale.owner}` again, or set REDIS_URL to the Redis to use"
        )
    default = str(Settings.model_fields["redis_url"].default)
    print(
        f"redis: {default} (the default: REDIS_URL is set neither in the environment nor in "
        f"{env_file}, and no Redis started by `make run` or `make cluster` is recorded here)",
        file=sys.stderr,
    )
    return {}


def _read_password(username: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {username}: ")
        if getpass.getpass("again: ") != first:
            raise SystemExit("passwords differ")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        return check_password(username, password)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n")[0])
    groups = parser.add_subparsers(dest="group", required=True)
    users = groups.add_parser("users", help="manage API users").add_subparsers(
        dest="command", required=True
    )
    add = users.add_parser("add", help="create a user (password from prompt or stdin)")
    add.add_argument("username")
    add.add_argument("--scopes", default="predict", help="comma-separated: predict,admin")
    users.add_parser("list", help="list users")
    for name, text in (
        ("disable", "refuse the user's logins and tokens"),
        ("enable", "allow a disabled user again"),
        ("delete", "remove the user; their tokens stop working"),
        ("set-password", "set a new password (revokes the user's tokens)"),
        ("revoke-tokens", "refuse every token issued to the user so far"),
    ):
        users.add_parser(name, help=text).add_argument("username")
    model = groups.add_parser("model", help="serve your own model").add_subparsers(
        dest="command", required=True
    )
    pack = model.add_parser(
        "package",
        help="write the manifest of a fitted scikit-learn classifier (model.joblib + model.json)",
        description=(
            "Check a fitted scikit-learn classifier (a joblib pickle) and write model.joblib "
            "and model.json, the artifact the service verifies and serves (MODEL_DIR). "
            "Options not given come from a YAML file beside the model (MODEL.yaml) or --spec."
        ),
    )
    pack.add_argument("model", type=Path, help="the joblib pickle (only one you trust)")
    pack.add_argument("--name", help="model name (default: from the file name)")
    pack.add_argument(
        "--features", help="comma-separated feature names, in the estimator's column order"
    )
    pack.add_argument(
        "--classes", help="comma-separated class names, in the order of the estimator's classes_"
    )
    pack.add_argument(
        "--bounds",
        action="append",
        default=[],
        metavar="[NAME=]MIN:MAX",
        help="accepted range of every feature, or of one (repeatable; `--bounds=-5:5` for a "
        "negative minimum); default: any finite value",
    )
    pack.add_argument("--example", help="a typical row for the API docs, comma-separated")
    pack.add_argument("--spec", type=Path, help="YAML spec (default: MODEL.yaml if present)")
    pack.add_argument(
        "--out", type=Path, help="directory to write into (default: the model's directory)"
    )
    return parser


def _package(args: argparse.Namespace) -> int:
    # Imported here: scikit-learn takes a second to import, which `users` commands never need.
    from service.ml import package as packaging

    try:
        spec_path = args.spec or packaging.spec_beside(args.model)
        spec = packaging.read_spec(spec_path) if spec_path else packaging.PackageSpec()
        given = packaging.spec_from_arguments(
            name=args.name,
            features=args.features,
            classes=args.classes,
            bounds=args.bounds,
            example=args.example,
        )
        done = packaging.package(args.model, spec.overridden_by(given), args.out)
    except packaging.PackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    manifest = done.manifest
    path = "the exact fast path" if done.fast_path else "scikit-learn, in the thread pool"
    print(f"packaged {manifest.version} ({manifest.estimator}; served by {path})")
    print(f"  features: {', '.join(manifest.feature_names)}")
    print(f"  classes:  {', '.join(manifest.class_names)}")
    if done.unbounded:
        print(
            f"  note: no bounds for {', '.join(done.unbounded)}: the API accepts any finite "
            "value there (--bounds)",
        )
    out = done.out_dir.resolve()
    print(f"  -> {out}")
    print(f"serve it:  MODEL_DIR={done.out_dir} make run")
    build = "docker compose build --build-arg MODEL_DIR={} --build-arg MODEL_VERSION={}"
    inside = out.is_relative_to(Path.cwd().resolve() / "models")
    if inside:
        print("image:     " + build.format(out.relative_to(Path.cwd().resolve()), manifest.version))
    else:
        print(
            "image:     package it under models/ of the repository (--out models/NAME), "
            "then " + build.format("models/NAME", manifest.version)
        )
    return 0


async def _change(runtime: Runtime, command: str, username: str) -> bool:
    """Apply one change to an existing user; False when there is no such user."""
    if command in ("disable", "enable"):
        return await runtime.users.update(username, disabled=command == "disable")
    if command == "set-password":
        return await runtime.users.update(username, password=_read_password(username))
    if command == "revoke-tokens":
        return await runtime.users.revoke_tokens(username)
    return await runtime.delete_user(username)


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    runtime = Runtime.open(settings)
    store = runtime.users
    try:
        if args.command == "list":
            for user in await store.list():
                state = "disabled" if user.disabled else "enabled"
                print(f"{user.username}\t{','.join(sorted(user.scopes))}\t{state}")
            return 0
        username = normalize_username(args.username)
        if args.command == "add":
            scopes = check_scopes([s for s in args.scopes.split(",") if s])
            if not await store.create(username, _read_password(username), scopes):
                print(f"user {username!r} already exists", file=sys.stderr)
                return 1
            done = True
        else:
            try:
                done = await _change(runtime, args.command, username)
            except AdminChangeRefused as exc:
                print(f"refused: {exc}", file=sys.stderr)
                return 1
        if not done:
            print(f"no user named {username!r}", file=sys.stderr)
            return 1
        print(f"{args.command}: {username}")
        return 0
    finally:
        await runtime.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.group == "model":
        return _package(args)
    os.environ.update(choose_redis(os.environ))
    try:
        return asyncio.run(_run(args, load_settings()))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
