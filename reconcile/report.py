"""Reading runs and findings back: for the API, `--json` and the CSV report."""

from __future__ import annotations

import csv
from typing import IO

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.cells import csv_cell
from ledger.money import field_amount
from ledger.tables import Finding, InvoicePosition, ReconciliationRun

runs = ReconciliationRun.__table__
findings = Finding.__table__
positions = InvoicePosition.__table__

# The minor units as found, then the same amounts for people (blank where the field is no amount).
CSV_COLUMNS = ("run_id", "invoice_id", "category", "field", "ledger_value", "vinr_value", "currency",
               "ledger_amount", "vinr_amount", "corrected", "entry_ids")


def _iso(value) -> str | None:
    return None if value is None else value.isoformat()


def run_dict(row) -> dict:
    return {
        "id": row.id,
        "status": row.status,
        "dryRun": row.dry_run,
        "startedAt": _iso(row.started_at),
        "finishedAt": _iso(row.finished_at),
        "windowStart": row.window_start,
        "invoicesChecked": row.invoices_checked,
        "eventsBackfilled": row.events_backfilled,
        "correctionsPosted": row.corrections_posted,
        "apiRequests": row.api_requests,
        "counts": row.counts,
        "caughtUpInFlight": row.caught_up,
        "adopt": row.adopt,
        "adoptedQuietly": row.adopted,
        "coveredUntil": row.covered_until,
        "message": row.message,
    }


def finding_dict(row, locale: str | None = None) -> dict:
    return {
        "invoice": row.invoice_id,
        "category": row.category,
        "field": row.field,
        "ledgerValue": row.ledger_value,
        "vinrValue": row.vinr_value,
        "currency": row.currency,
        "ledgerAmount": field_amount(row.field, row.ledger_value, row.currency, locale),
        "vinrAmount": field_amount(row.field, row.vinr_value, row.currency, locale),
        "corrected": row.corrected,
        "entries": row.entry_ids,
    }


def _findings_of(run_id: int):
    """A run's findings in order, each with its invoice's currency (for its amounts)."""
    return (select(findings, positions.c.currency)
            .join(positions, positions.c.invoice_id == findings.c.invoice_id, isouter=True)
            .where(findings.c.run_id == run_id).order_by(findings.c.id))


async def list_runs(conn: AsyncConnection, limit: int = 50, before: int | None = None) -> list[dict]:
    query = select(runs).order_by(runs.c.id.desc()).limit(limit)
    if before is not None:
        query = query.where(runs.c.id < before)
    return [run_dict(row) for row in await conn.execute(query)]


async def get_run(conn: AsyncConnection, run_id: int, locale: str | None = None) -> dict | None:
    """One run with its findings, or None."""
    row = (await conn.execute(select(runs).where(runs.c.id == run_id))).first()
    if row is None:
        return None
    rows = await conn.execute(_findings_of(run_id))
    return {**run_dict(row), "findings": [finding_dict(f, locale) for f in rows]}


async def write_csv(conn: AsyncConnection, run_id: int, out: IO[str], locale: str | None = None) -> int:
    """Write the run's findings as CSV, streamed, every cell through `csv_cell`; return how many rows.
    The API, the dashboard and `vinr-recon reconcile --report` all write with this."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    count = 0
    result = await conn.stream(_findings_of(run_id))
    async for row in result:
        writer.writerow([csv_cell(value) for value in (
            row.run_id, row.invoice_id, row.category, row.field, row.ledger_value, row.vinr_value, row.currency,
            field_amount(row.field, row.ledger_value, row.currency, locale),
            field_amount(row.field, row.vinr_value, row.currency, locale),
            row.corrected, " ".join(map(str, row.entry_ids)))])
        count += 1
    return count
