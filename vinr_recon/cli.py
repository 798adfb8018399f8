"""`vinr-recon`: one command line that runs every part (contract section 7).

Each part registers its own subcommand from a small `commands` module that imports nothing
heavy; the work is imported only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vinr_recon.logging import configure_logging
from vinr_recon.settings import ConfigurationError, load_settings

# Modules with `register(subparsers)`; each adds parsers whose default `run(args, settings)`
# returns the exit status.
COMMAND_MODULES: tuple[str, ...] = (
    "reconcile.commands",
    "receiver.commands",
    "ledger.commands",
    "ledger.journal_commands",
    "worker.commands",
    "vinr.sandbox.commands",
    "vinr_recon.demo.commands",
    "vinr_recon.queue_commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vinr-recon",
        description="VINR invoice webhooks into a double-entry ledger, reconciled with VINR.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
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
        return args.run(args, settings)
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
