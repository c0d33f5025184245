"""Admin commands: `python -m service users add|list|disable|enable|delete|...` and
`python -m service model package MODEL.joblib ...`.

Subcommands: users add, list, disable, enable, delete, set-password, revoke-tokens; model
package (writes the manifest that lets the service serve a classifier fitted elsewhere; it
needs no Redis and no settings).

Passwords come from an interactive prompt, or from standard input when it is not a
terminal (`printf '%s\\n' "$PW" | python -m service users add bob`); never from argv, where
other users of the machine could read them in the process list.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path

from service.auth.users import AdminChangeRefused
from service.infra.config import Settings, load_settings
from service.rules.accounts import check_password, check_scopes, normalize_username
from service.runtime import Runtime


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
    try:
        return asyncio.run(_run(args, load_settings()))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
