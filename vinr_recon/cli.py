"""`vinr-recon`: one command line that runs every part (contract section 7).

Each part registers its own subcommand from a small `commands` module that imports nothing
heavy; the work is imported only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from vinr_recon.logging import configure_logging
from vinr_recon.settings import ConfigurationError, Settings, load_settings

# Modules with `register(subparsers)`; each adds parsers whose default `run(args, settings)`
# returns the exit status.
Command = Callable[[argparse.Namespace, Settings], int]
COMMAND_MODULES: tuple[str, ...] = (
    "reconcile.commands",
    "receiver.commands",
    "ledger.commands",
    "ledger.journal_commands",
    "worker.commands",
    "vinr_recon.sandbox_commands",
    "vinr_recon.demo.commands",
    "vinr_recon.queue_commands",
    "vinr_recon.events_commands",
)


# The environment variables (Settings' fields, upper-cased) each command reads, for its help's
# epilog; tests/test_cli.py checks every name against Settings and every command has an entry.
_REDIS = ("REDIS_URL", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "QUEUE_NAME")
_VINR_API = ("VINR_API_KEY", "VINR_API_BASE", "VINR_API_RATE")
_ALERTS = ("SMTP_URL", "ALERT_EMAIL_FROM", "ALERT_DEFAULT_RECIPIENT", "ALERT_WEBHOOK_URL", "ALERT_DIGEST_AT",
           "FULFILMENT_URL", "FULFILMENT_SECRET", "MONEY_LOCALE", "PUBLIC_URL")
COMMAND_ENVIRONMENT: dict[str, tuple[str, ...]] = {
    "serve": ("VINR_WEBHOOK_SECRET", "VINR_WEBHOOK_TOLERANCE", "VINR_WEBHOOK_MAX_BODY", *_REDIS,
              "REDIS_MIN_REPLICAS", "DATABASE_URL", "LEDGER_API_TOKEN", "METRICS_TOKEN", "PUBLIC_URL",
              "ALLOWED_HOSTS", "HOST", "PORT", "MONEY_LOCALE", "ALERT_DEFAULT_RECIPIENT",
              "RECEIVER_MAX_HEADER_BYTES", "RECEIVER_HEADER_TIMEOUT", "RECEIVER_BODY_TIMEOUT",
              "RECEIVER_MAX_CONNECTIONS", "RECEIVER_BODY_BUDGET"),
    "worker": ("DATABASE_URL", *_REDIS, *_VINR_API, "RECONCILE_AT", "RECONCILE_FULL_SWEEP_DAYS", *_ALERTS),
    "reconcile": ("VINR_API_KEY", "VINR_API_BASE", "VINR_API_RATE", "DATABASE_URL", *_REDIS,
                  "RECONCILE_FULL_SWEEP_DAYS", "MONEY_LOCALE"),
    "replay": ("DATABASE_URL", *_REDIS),
    "db": ("DATABASE_URL", "MONEY_LOCALE"),
    "export": ("DATABASE_URL",),
    "sandbox": ("VINR_API_KEY", "VINR_WEBHOOK_SECRET", "VINR_API_BASE", "VINR_API_RATE"),
    "demo": ("REDIS_URL",),
    "queue": _REDIS,
    "events": ("VINR_API_KEY", "VINR_API_BASE", "VINR_API_RATE", "VINR_WEBHOOK_SECRET"),
}
_EVERYWHERE = ("LOG_LEVEL", "SECRETS_DIR")


def environment_epilog(command: str) -> str | None:
    names = COMMAND_ENVIRONMENT.get(command)
    if names is None:
        return None
    read = ", ".join(dict.fromkeys((*names, *_EVERYWHERE)))
    return (f"environment variables: {read} (also read from .env in the working directory, and from "
            "files in SECRETS_DIR)")


def _add_epilogs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Each command's help (and its actions', e.g. `db check`) ends with what it reads."""
    for command, parser in subparsers.choices.items():
        epilog = environment_epilog(command)
        stack = [parser]
        while stack:
            current = stack.pop()
            if epilog and not current.epilog:
                current.epilog = epilog
            stack += [p for action in current._actions if isinstance(action, argparse._SubParsersAction)
                      for p in action.choices.values()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vinr-recon",
        description="VINR invoice webhooks into a double-entry ledger, reconciled with VINR.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    _add_epilogs(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vinr-recon")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(f"vinr-recon {args.command}: configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        run: Command = args.run
        return run(args, settings)
    except ConfigurationError as exc:
        print(f"vinr-recon {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        unreachable = _unreachable_database(exc)
        if unreachable is None:
            raise
        print(f"vinr-recon {args.command}: DATABASE_URL: {unreachable}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _unreachable_database(exc: BaseException) -> str | None:
    """The one line to say when a command cannot reach its database (a wrong host, port, name or
    password is a setting a person got wrong), or None for any other error."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        return f"the database refused or cannot be opened: {reason}"
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return f"the database cannot be reached: {exc.strerror or exc}"
    return None


if __name__ == "__main__":
    sys.exit(main())
