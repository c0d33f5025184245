"""Admin commands: `python -m service users add|list|disable|enable|delete|...`.

Subcommands: add, list, disable, enable, delete, set-password, revoke-tokens.

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
    return parser


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
    try:
        return asyncio.run(_run(args, load_settings()))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
