"""`vinr-recon export journal --from DATE --to DATE [--format csv|json]`: the journal's postings
of those UTC days (both included) on stdout, streamed (see ledger.journal)."""

from __future__ import annotations

import argparse
from datetime import date
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vinr_recon.settings import Settings


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = subparsers.add_parser("export", help="the ledger in finance's formats")
    what = export.add_subparsers(dest="export_command", metavar="WHAT", required=True)
    journal = what.add_parser("journal", help="one row per posting of the entries effective from DATE to DATE "
                                              "(UTC days, both included), on stdout")
    journal.add_argument("--from", dest="start", type=_day, required=True, metavar="DATE", help="first day, YYYY-MM-DD")
    journal.add_argument("--to", dest="end", type=_day, required=True, metavar="DATE",
                         help="last day (included), YYYY-MM-DD")
    journal.add_argument("--format", choices=("csv", "json"), default="csv")
    journal.set_defaults(run=run_journal)


def run_journal(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import sys

    from ledger.db import create_engine
    from ledger.journal import encoded, journal_rows

    if args.end < args.start:
        print(f"vinr-recon export journal: --to {args.end} is before --from {args.start}", file=sys.stderr)
        return 2

    async def export() -> None:
        engine = create_engine(settings.database_url, writer=False)
        try:
            async with engine.connect() as conn:
                async for chunk in encoded(journal_rows(conn, args.start, args.end), args.format):
                    sys.stdout.write(chunk)
            sys.stdout.flush()
        finally:
            await engine.dispose()

    try:
        asyncio.run(export())
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        return 0
    return 0
