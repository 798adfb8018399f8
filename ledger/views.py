"""Read-side queries for the merchant's API (contract section 5), as the models of ledger.shapes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import shapes
from ledger.book import trial_balance
from ledger.deadletters import waiting_count
from ledger.outbox import dead_count
from ledger.tables import entries, positions, postings, received


async def invoice_view(conn: AsyncConnection, invoice_id: str) -> shapes.Invoice | None:
    """The ledger's view of one invoice, or None if the ledger never saw it.

    `entries` are every journal entry with its postings, oldest first; `events` every event
    received for the invoice with its outcome; `corrections` the entries reconciliation posted.
    """
    row = (await conn.execute(select(positions).where(positions.c.invoice_id == invoice_id))).first()
    if row is None or row.status is None:
        return None
    journal = await _entries(conn, invoice_id)
    return shapes.Invoice.model_validate({
        **row._mapping, "entries": journal, "events": await _events(conn, invoice_id),
        "corrections": [entry for entry in journal if entry.source == "reconciliation"],
    })


async def _entries(conn: AsyncConnection, invoice_id: str) -> list[shapes.JournalEntry]:
    rows = await conn.execute(
        select(entries, postings.c.account, postings.c.direction, postings.c.amount,
               postings.c.currency.label("posting_currency"))
        .join(postings, postings.c.entry_id == entries.c.id)
        .where(entries.c.invoice_id == invoice_id)
        .order_by(entries.c.id, postings.c.id)
    )
    by_id: dict[int, tuple[Row[Any], list[shapes.Posting]]] = {}
    for row in rows:
        _, lines = by_id.setdefault(row.id, (row, []))
        lines.append(shapes.Posting(account=row.account, direction=row.direction, amount=row.amount,
                                    currency=row.posting_currency))
    return [shapes.JournalEntry.model_validate({**row._mapping, "postings": lines}) for row, lines in by_id.values()]


async def _events(conn: AsyncConnection, invoice_id: str) -> list[shapes.ReceivedEvent]:
    rows = await conn.execute(
        select(received.c.event_id, received.c.type, received.c.source, received.c.outcome, received.c.created,
               received.c.received_at, received.c.applied_at, received.c.error)
        .where(received.c.invoice_id == invoice_id)
        .order_by(received.c.id)
    )
    return [shapes.ReceivedEvent.model_validate(row) for row in rows]


async def balances(conn: AsyncConnection) -> shapes.Balances:
    """Per account and currency: debits, credits and balance (debits - credits)."""
    return shapes.Balances.of(await trial_balance(conn))


async def dead(conn: AsyncConnection) -> dict[str, int]:
    """What waits for a person: dead-lettered events not yet replayed, and dead notices."""
    return {"events": await waiting_count(conn), "notices": await dead_count(conn)}
