"""`popbox serve | demo | check-config | user ... | pw | deliver | db migrate | import`;
main(argv) -> exit code."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from popbox import __version__
from popbox.config import Config, ConfigError, load_config, parse_config
from popbox.demo_data import (
    DEFAULT_DATA_DIR,
    DEFAULT_PORT,
    connect_hint,
    demo_config,
    ensure_demo_data,
)
from popbox.logsetup import setup_logging, stop_background_logging

# Exit statuses: 0 ok, 1 operation failed, 2 usage or configuration error (sysexits-like).
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

log = logging.getLogger("popbox")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="popbox", description="A POP3 server.")
    parser.add_argument("--version", action="version", version=f"popbox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve POP3 (without --config: the demo setup)")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    demo = sub.add_parser("demo", help="serve the demo setup from a local data directory")
    for demo_parser in (serve, demo):
        demo_parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
        demo_parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="demo port")

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("config", type=Path)

    user = sub.add_parser("user", help="edit the passwd-file or the user database")
    user.add_argument(
        "--config", type=Path, help="take auth.passwd_file or auth.database from this config"
    )
    user.add_argument("--passwd-file", type=Path, help="the passwd-file to edit")
    user.add_argument("--database", metavar="URL", help="the PostgreSQL user database")
    actions = user.add_subparsers(dest="action", required=True)
    for name in ("add", "passwd"):
        action = actions.add_parser(name)
        action.add_argument("name")
        action.add_argument("--scheme", default="ARGON2ID")
        action.add_argument("--password-stdin", action="store_true", help="read one line")
    actions.add_parser("del").add_argument("name")
    actions.add_parser("list")

    deliver = sub.add_parser("deliver", help="deliver a message from stdin (mailbox_command)")
    deliver.add_argument("--config", type=Path, required=True)
    deliver.add_argument("users", nargs="+", metavar="USER")

    pw = sub.add_parser("pw", help="print a password hash, like `doveadm pw`")
    pw.add_argument("-s", "--scheme", default="ARGON2ID")
    pw.add_argument("-p", "--password", help="the password (default: ask)")

    from popbox.cli_db import add_parsers  # noqa: PLC0415

    add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: str = args.command
    try:
        if command in ("serve", "demo"):
            return _serve(args)
        if command == "check-config":
            load_config(args.config)
            print(f"{args.config}: OK")
            return EXIT_OK
        if command == "user":
            from popbox.cli_user import user_command  # noqa: PLC0415

            if args.action == "add" and (refused := _maildrop_refused(args)) is not None:
                print(f"popbox: {refused}", file=sys.stderr)
                return EXIT_FAILED
            return user_command(args, _user_database(args))
        if command == "deliver":
            return _deliver(args)
        if command == "pw":
            from popbox.cli_user import pw_command  # noqa: PLC0415

            return pw_command(args)
        if command in ("db", "import"):
            from popbox import cli_db  # noqa: PLC0415

            return cli_db.db_command(args) if command == "db" else cli_db.import_command(args)
    except ConfigError as error:
        stop_background_logging()  # what was logged before comes first
        print(f"popbox: {error}", file=sys.stderr)
        return EXIT_CONFIG
    raise AssertionError(command)


def _deliver(args: argparse.Namespace) -> int:
    """`popbox deliver --config FILE USER... < message`, for Postfix's mailbox_command or
    procmail; exit statuses per sysexits(3)."""
    from popbox.delivery.deliver_cmd import EX_CONFIG, deliver_main  # noqa: PLC0415
    from popbox.server.assembly import make_authenticator, make_store  # noqa: PLC0415
    from popbox.server.privileges import become_user_to_deliver  # noqa: PLC0415

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"popbox deliver: {error}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(config.log_level, config.log_format)
    message = sys.stdin.buffer.read()
    try:
        become_user_to_deliver(config)
    except ConfigError as error:
        print(f"popbox deliver: {error}", file=sys.stderr)
        return EX_CONFIG
    return deliver_main(make_store(config), make_authenticator(config), args.users, message)


def _maildrop_refused(args: argparse.Namespace) -> str | None:
    """Why the mail store of --config would refuse the new user's maildrop (a name that
    is another mbox's dotlock, for one): None if it would not, or without --config. A
    name that is no user name at all is left to the user database to refuse."""
    from popbox.auth.usernames import InvalidUsername, validate_username  # noqa: PLC0415
    from popbox.server.assembly import make_store  # noqa: PLC0415
    from popbox.storage.base import InvalidMaildropUser  # noqa: PLC0415

    try:
        validate_username(args.name)
    except InvalidUsername:
        return None
    if args.config is None:
        return None

    location = getattr(make_store(load_config(args.config)), "location", None)
    try:
        if location is not None:
            location(args.name)
    except InvalidMaildropUser as error:
        return str(error)
    return None


def _user_database(args: argparse.Namespace) -> Path | str:
    """The passwd-file (a Path) or the user database's URL (a str) to edit."""
    if args.passwd_file is not None:
        return Path(args.passwd_file)
    if args.database is not None:
        return str(args.database)
    if args.config is not None:
        auth = load_config(args.config).auth
        if auth.database is not None:
            return auth.database
        assert auth.passwd_file is not None  # AuthConfig requires one of the two
        return auth.passwd_file
    raise ConfigError("give --passwd-file FILE, --database URL or --config FILE")


def _serve(args: argparse.Namespace) -> int:
    config: Config
    demo = getattr(args, "config", None) is None
    if demo:
        data_dir: Path = args.data_dir
        created = ensure_demo_data(data_dir)
        config = parse_config(
            demo_config(data_dir, args.port),
            base_dir=data_dir.resolve(),
            source_name="<embedded default>",
        )
        if created:
            print(f"popbox: created {data_dir}/ with a demo user and sample mail", flush=True)
    else:
        config = load_config(args.config)
    setup_logging(config.log_level, config.log_format, background=True)

    def ready(bound: list[tuple[str, int]]) -> None:
        if demo:
            port = bound[0][1]
            print(f"popbox: serving POP3 on 127.0.0.1:{port} from {args.data_dir}/", flush=True)
            print(connect_hint(port), flush=True)

    from popbox.server.daemon import start  # noqa: PLC0415

    return start(config, on_ready=ready)


def run_cli() -> None:
    sys.exit(main())


def getpass_twice() -> str:
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Retype password: "):
        raise ValueError("passwords do not match")
    return first
