"""The journal for finance's tools: one row per posting between two dates, streamed, and the
trial balance as of the end of a day.

Dates are UTC calendar days and both ends are inclusive: `from 2026-11-01 to 2026-11-30` is
every posting whose entry's `effective_at` (when the fact happened at VINR; for a correction,
when reconciliation posted it) is on or after 2026-11-01 00:00 UTC and before 2026-12-01 00:00
UTC. Amounts are integers in minor units of `currency` (EUR cents); a row has its amount in
`debit` or in `credit`, the other 0.

The rows come from a server-side cursor (`AsyncConnection.stream`) and are encoded a chunk at a
time, so a year of a large merchant never sits in memory.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import shapes
from ledger.cells import csv_cell
from ledger.tables import entries, positions, postings

# The export's columns, in order (README: "The journal export").
COLUMNS = ("entry_id", "entry_date", "effective_at", "kind", "account", "debit", "credit", "currency",
           "invoice_id", "invoice_number", "customer", "source", "event_id", "run_id", "posting_id")
FORMATS = ("csv", "json")
# One posting of the export, keyed by COLUMNS: ids, texts and integer amounts, null where none.
JournalRow = dict[str, str | int | None]
CHUNK_ROWS = 500  # rows per chunk handed to the response or stdout


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def end_of(day: date) -> datetime:
    """The first moment after `day` (UTC): the next day's 00:00, or for 9999-12-31 the day's last
    microsecond, since no later date exists."""
    if day == date.max:
        return datetime.max.replace(tzinfo=UTC)
    return day_start(day + timedelta(days=1))


def period(start: date, end: date) -> tuple[datetime, datetime]:
    """`[start 00:00 UTC, the day after end 00:00 UTC)`: both days included."""
    if end < start:
        raise ValueError(f"the period ends ({end}) before it starts ({start})")
    return day_start(start), end_of(end)


async def journal_rows(conn: AsyncConnection, start: date, end: date) -> AsyncIterator[JournalRow]:
    """Every posting of the entries effective in `[start, end]` (UTC days, inclusive), in entry
    and posting order, as a dict keyed by COLUMNS."""
    since, until = period(start, end)
    query = (
        select(entries.c.id, entries.c.effective_at, entries.c.kind, entries.c.invoice_id, entries.c.source,
               entries.c.event_id, entries.c.run_id, postings.c.id.label("posting_id"), postings.c.account,
               postings.c.direction, postings.c.amount, postings.c.currency, positions.c.number,
               positions.c.customer)
        .select_from(entries.join(postings, postings.c.entry_id == entries.c.id)
                     .outerjoin(positions, positions.c.invoice_id == entries.c.invoice_id))
        .where(entries.c.effective_at >= since, entries.c.effective_at < until)
        .order_by(entries.c.id, postings.c.id)
    )
    result = await conn.stream(query.execution_options(yield_per=CHUNK_ROWS))
    async for row in result:
        effective = row.effective_at
        debit = row.amount if row.direction == "debit" else 0
        yield {
            "entry_id": row.id, "entry_date": effective.date().isoformat(), "effective_at": effective.isoformat(),
            "kind": row.kind, "account": row.account, "debit": debit, "credit": row.amount - debit,
            "currency": row.currency, "invoice_id": row.invoice_id, "invoice_number": row.number,
            "customer": row.customer, "source": row.source, "event_id": row.event_id, "run_id": row.run_id,
            "posting_id": row.posting_id,
        }


# --- encodings ---------------------------------------------------------------------------------

async def csv_chunks(rows: AsyncIterator[JournalRow]) -> AsyncIterator[str]:
    """The header line, then the rows as CSV, CHUNK_ROWS at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    count = 0
    async for row in rows:
        writer.writerow([csv_cell(row[c]) for c in COLUMNS])
        count += 1
        if count % CHUNK_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


async def json_chunks(rows: AsyncIterator[JournalRow]) -> AsyncIterator[str]:
    """One JSON array of row objects, written as it is read."""
    parts = ["["]
    first = True
    async for row in rows:
        parts.append(("\n" if first else ",\n") + json.dumps(row, separators=(",", ":")))
        first = False
        if len(parts) >= CHUNK_ROWS:
            yield "".join(parts)
            parts = []
    parts.append("\n]\n")
    yield "".join(parts)


def encoded(rows: AsyncIterator[JournalRow], fmt: str) -> AsyncIterator[str]:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    return csv_chunks(rows) if fmt == "csv" else json_chunks(rows)


# --- the trial balance as of a day -------------------------------------------------------------


async def trial_balance_as_of(conn: AsyncConnection, day: date) -> dict[tuple[str, str], tuple[int, int]]:
    """(account, currency) -> (debits, credits) over the entries effective up to the end of `day`
    (UTC), i.e. before the next day's 00:00 UTC."""
    until = end_of(day)
    debit = func.coalesce(func.sum(postings.c.amount).filter(postings.c.direction == "debit"), 0)
    credit = func.coalesce(func.sum(postings.c.amount).filter(postings.c.direction == "credit"), 0)
    rows = await conn.execute(
        select(postings.c.account, postings.c.currency, debit, credit)
        .select_from(postings.join(entries, entries.c.id == postings.c.entry_id))
        .where(entries.c.effective_at < until)
        .group_by(postings.c.account, postings.c.currency)
        .order_by(postings.c.account, postings.c.currency)
    )
    return {(a, c): (int(d), int(k)) for a, c, d, k in rows}


async def balances_as_of(conn: AsyncConnection, day: date) -> shapes.Balances:
    """`/api/balances`'s answer (contract section 5) as of the end of `day`, with `asOf`."""
    return shapes.Balances.of(await trial_balance_as_of(conn, day), as_of=day)
