"""`vinr-recon reconcile [--dry-run] [--since DATE] [--adopt] [--json] [--report FILE.csv]`."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime

from vinr_recon.settings import Settings


def _since(value: str) -> int:
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "reconcile",
        help="one reconciliation run now; exit 0 when the ledger matches VINR at the end",
        description="Compare the ledger with VINR's REST API, backfill missed events and correct drift.",
    )
    parser.add_argument("--dry-run", action="store_true", help="report differences, change nothing")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--since", type=_since, metavar="DATE", help="sweep invoices created since DATE (UTC)")
    scope.add_argument("--adopt", action="store_true",
                        help="adopt an account with history: sweep everything and book it, but send no alert or "
                             "callback for what happened before this run started (run it once, at installation)")
    parser.add_argument("--json", action="store_true", help="print the run and its findings as JSON")
    parser.add_argument("--report", metavar="FILE.csv", help="write the run's findings to a CSV file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import json
    import sys

    from rich.console import Console

    from reconcile.lock import LockLost
    from reconcile.output import print_findings, print_summary, progress_bar, write_outputs
    from reconcile.service import reconcile_once

    console = Console(stderr=True)

    async def main() -> int:
        try:
            with progress_bar(console, enabled=console.is_terminal and not args.json) as advance:
                report = await reconcile_once(settings, dry_run=args.dry_run, since=args.since, progress=advance,
                                              adopt=args.adopt)
        except LockLost as exc:
            console.print(f"Reconciliation stopped: {exc}. Its run is recorded as stopped; run it again.")
            return 1
        if report is None:
            console.print("Another reconciliation is running; this one was skipped.")
            return 3
        document = await write_outputs(settings, report, csv_path=args.report)
        if args.json:
            json.dump(document, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            out = Console()  # the report on stdout, the rest on stderr
            print_findings(out, document["findings"])
            print_summary(out, report, csv_path=args.report)
        return 0 if report.matches else 1

    return asyncio.run(main())
