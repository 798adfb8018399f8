"""The reconciliation runs' record: a run's start and end, its findings, and the reads a run
makes of the ledger; then reading runs and findings back (the API, `--json`, the CSV report).

The policy (which window, what to correct) is reconcile.run's; every statement is here.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, Unpack

from sqlalchemy import ColumnElement, Row, Select, and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import shapes
from ledger.book import position_from_row
from ledger.cells import csv_cell
from ledger.money import field_amount
from ledger.posting import Position
from ledger.tables import entries, findings, positions, received, runs

DIED = "did not finish: its process stopped before recording an end"


# --- A run's record --------------------------------------------------------------------------

async def close_dead_runs(conn: AsyncConnection, now: datetime) -> None:
    """Runs are one at a time (reconcile.lock): a row still `running` is a run that died."""
    await conn.execute(update(runs).where(runs.c.status == "running").values(
        status="failed", finished_at=now, message=DIED))


async def last_coverage(conn: AsyncConnection) -> int | None:
    """How far back the completed real runs have covered (epoch seconds), or None."""
    return await conn.scalar(
        select(runs.c.covered_until).where(runs.c.dry_run.is_(False), runs.c.covered_until.is_not(None))
        .order_by(runs.c.id.desc()).limit(1))


async def last_full_sweep(conn: AsyncConnection) -> datetime | None:
    """When the last completed real run without a window started, or None."""
    return await conn.scalar(
        select(runs.c.started_at).where(runs.c.status == "completed", runs.c.dry_run.is_(False),
                                        runs.c.window_start.is_(None)).order_by(runs.c.id.desc()).limit(1))


async def start_run(conn: AsyncConnection, now: datetime, *, dry_run: bool, adopt: bool,
                    window: int | None) -> int:
    run_id: int = await conn.scalar(insert(runs).values(
        started_at=now, status="running", dry_run=dry_run, adopt=adopt, window_start=window, counts={},
    ).returning(runs.c.id))
    return run_id


async def finish_run(conn: AsyncConnection, run_id: int, now: datetime, **figures: Any) -> None:
    """Record how the run ended: its status, figures and message (columns of reconciliation_runs)."""
    await conn.execute(update(runs).where(runs.c.id == run_id).values(finished_at=now, **figures))


async def record_findings(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(findings), rows)


async def entries_of_run(conn: AsyncConnection, run_id: int, invoice_ids: list[str]) -> dict[str, list[int]]:
    """The ids of the entries the run posted for each of `invoice_ids`, in order."""
    posted = await conn.execute(
        select(entries.c.invoice_id, entries.c.id)
        .where(entries.c.run_id == run_id, entries.c.invoice_id.in_(invoice_ids)).order_by(entries.c.id))
    entry_ids: dict[str, list[int]] = {}
    for invoice_id, entry_id in posted:
        entry_ids.setdefault(invoice_id, []).append(entry_id)
    return entry_ids


async def first_findings(conn: AsyncConnection, run_id: int, limit: int) -> list[dict[str, Any]]:
    """The run's first findings with their invoice's currency, as the drift alert lists them."""
    rows = await conn.execute(_findings_of(run_id).limit(limit))
    return [{"invoiceId": r.invoice_id, "category": r.category, "field": r.field, "ledger": r.ledger_value,
             "vinr": r.vinr_value, "corrected": r.corrected, "currency": r.currency} for r in rows]


# --- What a run reads of the ledger ----------------------------------------------------------

async def received_among(conn: AsyncConnection, event_ids: Iterable[str]) -> set[str]:
    """Those of `event_ids` the ledger has received (whatever became of them)."""
    return set((await conn.execute(select(received.c.event_id).where(received.c.event_id.in_(list(event_ids)))))
               .scalars())


async def positions_of(conn: AsyncConnection, invoice_ids: list[str]) -> dict[str, Position]:
    """The positions the ledger holds of `invoice_ids` (unlocked: a snapshot of now)."""
    rows = await conn.execute(select(positions).where(positions.c.invoice_id.in_(invoice_ids)))
    return {row.invoice_id: position_from_row(row) for row in rows}


async def not_final_after(conn: AsyncConnection, statuses: tuple[str, ...], created_before: int | None,
                          after: str, limit: int) -> list[str]:
    """Up to `limit` ids after `after`, in id order, of positions in `statuses`, created before
    `created_before` (or of no known creation) when given."""
    condition: ColumnElement[bool] = positions.c.status.in_(statuses)
    if created_before is not None:
        condition = and_(condition, or_(positions.c.created < created_before, positions.c.created.is_(None)))
    return list((await conn.execute(
        select(positions.c.invoice_id).where(condition, positions.c.invoice_id > after)
        .order_by(positions.c.invoice_id).limit(limit))).scalars())


# --- The figures the metrics show ------------------------------------------------------------

@dataclass(frozen=True)
class LastRun:
    started_at: datetime
    finished_at: datetime
    status: str
    api_requests: int
    findings: dict[str, int]


@dataclass(frozen=True)
class ReconciliationFigures:
    last_success: datetime | None  # when the newest completed run (not a dry run) finished
    last_run: LastRun | None  # the newest run that finished, however it ended (not a dry run)


async def reconciliation_figures(conn: AsyncConnection) -> ReconciliationFigures:
    """What the ledger says of its runs; dry runs are previews and count for nothing here."""
    real = runs.c.dry_run.is_(False)
    last_success = await conn.scalar(
        select(runs.c.finished_at).where(real, runs.c.status == "completed").order_by(runs.c.id.desc()).limit(1))
    row = (await conn.execute(
        select(runs.c.started_at, runs.c.finished_at, runs.c.status, runs.c.api_requests, runs.c.counts)
        .where(real, runs.c.status != "running").order_by(runs.c.id.desc()).limit(1))).first()
    last_run = None if row is None else LastRun(
        row.started_at, row.finished_at or row.started_at, row.status, row.api_requests,
        {category: int(count) for category, count in (row.counts or {}).items()})
    return ReconciliationFigures(last_success, last_run)


# --- Reading runs back -----------------------------------------------------------------------

# The minor units as found, then the same amounts for people (blank where the field is no amount).
CSV_COLUMNS = ("run_id", "invoice_id", "category", "field", "ledger_value", "vinr_value", "currency",
               "ledger_amount", "vinr_amount", "corrected", "entry_ids")


def finding_of(row: Row[Any], locale: str | None = None) -> shapes.Finding:
    """A row of `_findings_of`, with its amounts for people."""
    return shapes.Finding.model_validate({
        **row._mapping, "ledgerAmount": field_amount(row.field, row.ledger_value, row.currency, locale),
        "vinrAmount": field_amount(row.field, row.vinr_value, row.currency, locale)})


def _findings_of(run_id: int) -> Select[Unpack[tuple[Any, ...]]]:
    """A run's findings in order, each with its invoice's currency (for its amounts)."""
    return (select(findings, positions.c.currency)
            .join(positions, positions.c.invoice_id == findings.c.invoice_id, isouter=True)
            .where(findings.c.run_id == run_id).order_by(findings.c.id))


async def list_runs(conn: AsyncConnection, limit: int = 50, before: int | None = None) -> list[shapes.Run]:
    query = select(runs).order_by(runs.c.id.desc()).limit(limit)
    if before is not None:
        query = query.where(runs.c.id < before)
    return [shapes.Run.model_validate(row) for row in await conn.execute(query)]


async def get_run(conn: AsyncConnection, run_id: int, locale: str | None = None) -> shapes.RunWithFindings | None:
    """One run with its findings, or None."""
    row = (await conn.execute(select(runs).where(runs.c.id == run_id))).first()
    if row is None:
        return None
    rows = await conn.execute(_findings_of(run_id))
    return shapes.RunWithFindings.model_validate({**row._mapping, "findings": [finding_of(f, locale) for f in rows]})


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
