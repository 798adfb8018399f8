"""What `vinr-recon reconcile` shows: a progress bar on a terminal, a summary, JSON and CSV."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ledger.db import create_engine
from ledger.findings import CATEGORIES
from ledger.runs import get_run, write_csv
from ledger.shapes import ReconcileReport
from reconcile.run import RunReport
from vinr_recon.settings import Settings


@contextlib.contextmanager
def progress_bar(console: Console, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield a callback counting invoices checked; a live bar only on a terminal. While it
    shows, log lines go through the bar's console, which prints them above it rather than
    gluing them onto it."""
    if not enabled:
        yield lambda n: None
        return
    columns = (SpinnerColumn(), TextColumn("reconciling: {task.completed} invoices checked"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, redirect_stderr=True) as progress:
        # The handlers hold the stderr they were given; rich's redirect replaced sys.stderr.
        handlers = [h for h in logging.getLogger().handlers
                    if isinstance(h, logging.StreamHandler) and h.stream is sys.__stderr__]
        for handler in handlers:
            handler.setStream(sys.stderr)
        try:
            task = progress.add_task("reconcile", total=None)
            yield lambda n: progress.advance(task, n)
        finally:
            for handler in handlers:
                handler.setStream(sys.__stderr__)


async def write_outputs(settings: Settings, report: RunReport, csv_path: str | None) -> dict[str, Any]:
    """Write the CSV if asked; return the run with its findings for --json."""
    engine = create_engine(settings.database_url, writer=False)
    try:
        async with engine.connect() as conn:
            if csv_path:
                with open(csv_path, "w", newline="") as out:
                    await write_csv(conn, report.run_id, out, locale=settings.money_locale)
            run = await get_run(conn, report.run_id, locale=settings.money_locale)
    finally:
        await engine.dispose()
    assert run is not None, "the run recorded itself before reporting"
    return ReconcileReport(**dict(run), matches=report.matches).model_dump(mode="json")


# The summary lists this many findings; the rest are in --report's CSV and the API.
LISTED = 20


def print_findings(console: Console, findings: list[dict[str, Any]]) -> None:
    """The run's first findings, amounts for people beside what the ledger and VINR hold."""
    if not findings:
        return
    table = Table(title="Differences found" + (f" (the first {LISTED} of {len(findings)})"
                                               if len(findings) > LISTED else ""))
    for column in ("Invoice", "Category", "Field", "Ledger", "VINR", "Corrected"):
        table.add_column(column)
    for f in findings[:LISTED]:
        table.add_row(f["invoice"], f["category"].replace("_", " "), f["field"] or "",
                      f["ledgerAmount"] or f["ledgerValue"] or "none", f["vinrAmount"] or f["vinrValue"] or "none",
                      "yes" if f["corrected"] else "no")
    console.print(table)


def print_summary(console: Console, report: RunReport, csv_path: str | None) -> None:
    table = Table(title=f"Reconciliation run {report.run_id}" + (" (dry run)" if report.dry_run else ""))
    table.add_column("Measure")
    table.add_column("Value", justify="right")
    table.add_row("status", report.status)
    table.add_row("invoices checked", str(report.invoices_checked))
    table.add_row("events backfilled", str(report.events_backfilled))
    for category in CATEGORIES:
        table.add_row(category.replace("_", " "), str(report.counts.get(category, 0)))
    table.add_row("corrections posted", str(report.corrections_posted))
    table.add_row("VINR API requests", str(report.api_requests))
    if report.adopt:
        table.add_row("invoices adopted quietly", str(report.adopted))
    console.print(table)
    if report.message:
        console.print(f"[red]{report.message}[/red]")
    if csv_path:
        console.print(f"findings written to {csv_path}")
    console.print(verdict(report))


def verdict(report: RunReport) -> str:
    """The last line of the summary: only what the run knows."""
    if report.status != "completed":
        return f"[red]the run ended {report.status}: the ledger was not fully checked; run it again[/red]"
    found = sum(report.counts.values())
    if report.dry_run:
        return ("[green]dry run: the ledger matches VINR[/green]" if not found else
                f"[yellow]dry run: the real run would correct {found} difference{'s' * (found != 1)}[/yellow]")
    if report.matches:
        return "[green]the ledger matches VINR[/green]"
    return f"[red]the ledger does not match VINR: {report.unresolved} invoice(s) left for a person[/red]"
