"""`vinr-recon`: one command line that runs every part (contract section 7).

Each part registers its own subcommand from a small `commands` module that imports nothing
heavy; the work is imported only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vinr_recon.logging import configure_logging
from vinr_recon.settings import ConfigurationError, Settings

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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    try:
        return args.run(args, settings)
    except ConfigurationError as exc:
        print(f"vinr-recon {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
