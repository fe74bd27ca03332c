"""`popbox user add|passwd|del|list` and `popbox pw` (like `doveadm pw`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from popbox.auth import passwdfile, schemes
from popbox.auth.precis import normalize_password
from popbox.auth.usernames import InvalidUsername


def _password(args: argparse.Namespace) -> str:
    if getattr(args, "password_stdin", False):
        return sys.stdin.readline().rstrip("\r\n")
    if getattr(args, "password", None):
        return str(args.password)
    from popbox.cli import getpass_twice  # noqa: PLC0415

    return getpass_twice()


def user_command(args: argparse.Namespace, path: Path | str) -> int:
    if isinstance(path, str):  # a postgresql:// URL: [auth] database
        from popbox.cli_db import user_db_command  # noqa: PLC0415

        return user_db_command(args, path, lambda: _password(args))
    try:
        if args.action == "list":
            for name in passwdfile.list_users(path):
                print(name)
        elif args.action == "add":
            passwdfile.add_user(path, args.name, _password(args), scheme=args.scheme.upper())
            print(f"user {args.name} added to {path}")
        elif args.action == "passwd":
            passwdfile.set_password(path, args.name, _password(args), scheme=args.scheme.upper())
            print(f"password of {args.name} changed in {path}")
        elif args.action == "del":
            passwdfile.delete_user(path, args.name)
            print(f"user {args.name} removed from {path}")
    except (passwdfile.PasswdFileError, InvalidUsername, schemes.UnknownScheme, ValueError) as e:
        print(f"popbox user {args.action}: {e}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"popbox user {args.action}: {path}: {error.strerror}", file=sys.stderr)
        return 1
    return 0


def pw_command(args: argparse.Namespace) -> int:
    try:
        # RFC 8265 OpaqueString, as `popbox user add` and the login path apply it.
        password = normalize_password(_password(args))
        print(schemes.hash_password(password, args.scheme.upper()))
    except (schemes.UnknownScheme, ValueError) as error:
        print(f"popbox pw: {error}", file=sys.stderr)
        return 1
    return 0
