"""ledger.book.apply_event on SQLite and PostgreSQL: once per event id, whatever arrives."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from ledger.book import apply_event, record_dead, trial_balance
from ledger.posting import CannotApply
from ledger.tables import InvoicePosition, JournalEntry, ReceivedEvent
from lifecycles import body, snapshot
from vinr.events import InvalidEvent, parse_event

positions, entries, received = InvoicePosition.__table__, JournalEntry.__table__, ReceivedEvent.__table__


async def apply(engine, event_id, event_type, invoice, *, replay=False, created=1_763_800_000):
    raw = body(event_id, event_type, invoice, created)
    async with engine.begin() as conn:
        return await apply_event(conn, parse_event(raw), raw, {"x-request-id": "r1"}, replay=replay)


async def position(engine, invoice_id="inv_1"):
    async with engine.connect() as conn:
        return (await conn.execute(select(positions).where(positions.c.invoice_id == invoice_id))).one()


async def count(engine, table, *where):
    async with engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(table).where(*where))


async def test_an_event_applies_once_and_a_redelivery_is_a_duplicate(ledger_engine):
    first = await apply(ledger_engine, "evt_1", "invoice.finalized", snapshot("inv_1", "open", 1000))
    again = await apply(ledger_engine, "evt_1", "invoice.finalized", snapshot("inv_1", "open", 1000))
    assert (first.outcome, again.outcome) == ("applied", "duplicate")
    assert [e.kind for e in first.snapshot.entries] == ["finalize"]
    assert await count(ledger_engine, entries) == 1
    row = (await position(ledger_engine))
    assert (row.status, row.total, row.amount_due, row.version) == ("open", 1000, 1000, 1)
    async with ledger_engine.connect() as conn:
        stored = (await conn.execute(select(received))).one()
    assert (stored.outcome, stored.invoice_id, stored.headers) == ("applied", "inv_1", {"x-request-id": "r1"})
    assert stored.body == body("evt_1", "invoice.finalized", snapshot("inv_1", "open", 1000))


async def test_an_older_snapshot_is_recorded_stale_and_posts_nothing(ledger_engine):
    await apply(ledger_engine, "evt_2", "invoice.paid", snapshot("inv_1", "paid", 1000, 1000))
    late = await apply(ledger_engine, "evt_1", "invoice.finalized", snapshot("inv_1", "open", 1000))
    assert late.outcome == "stale"
    assert await count(ledger_engine, received, received.c.outcome == "stale") == 1
    assert (await position(ledger_engine)).status == "paid"
    assert sorted(k for (k,) in await _kinds(ledger_engine)) == ["finalize", "payment"]


async def test_an_event_of_another_type_is_kept_and_ignored(ledger_engine):
    result = await apply(ledger_engine, "evt_c", "customer.created", {"id": "cust_1", "object": "customer"})
    assert result.outcome == "ignored"
    assert await count(ledger_engine, received, received.c.outcome == "ignored") == 1
    assert await count(ledger_engine, positions) == 0


@pytest.mark.parametrize(
    "invoice, error",
    [
        ({**snapshot("inv_1", "paid", 1000, 1000), "total": 1000.0}, InvalidEvent),
        (snapshot("inv_1", "paid", 1000, 1000, currency="USD"), CannotApply),
    ],
    ids=["float-total", "currency-change"],
)
async def test_a_poison_event_raises_and_leaves_nothing_behind(ledger_engine, invoice, error):
    await apply(ledger_engine, "evt_1", "invoice.finalized", snapshot("inv_1", "open", 1000))
    with pytest.raises(error):
        await apply(ledger_engine, "evt_2", "invoice.paid", invoice)
    assert await count(ledger_engine, received) == 1
    assert await count(ledger_engine, entries) == 1
    assert (await position(ledger_engine)).version == 1


async def test_a_dead_event_is_a_duplicate_unless_replayed(ledger_engine):
    raw = body("evt_1", "invoice.finalized", snapshot("inv_1", "open", 1000))
    async with ledger_engine.begin() as conn:
        await record_dead(conn, "evt_1", "invoice.finalized", raw, {}, "ConcurrentUpdate")
    again = await apply(ledger_engine, "evt_1", "invoice.finalized", snapshot("inv_1", "open", 1000))
    replayed = await apply(ledger_engine, "evt_1", "invoice.finalized", snapshot("inv_1", "open", 1000), replay=True)
    twice = await apply(ledger_engine, "evt_1", "invoice.finalized", snapshot("inv_1", "open", 1000), replay=True)
    assert (again.outcome, replayed.outcome, twice.outcome) == ("duplicate", "applied", "duplicate")
    assert await count(ledger_engine, entries) == 1
    assert await count(ledger_engine, received, received.c.outcome == "applied", received.c.error.is_(None)) == 1


async def test_concurrent_deliveries_of_one_invoice_post_each_fact_once(ledger_engine):
    """Many transactions at once on one invoice: the position lock and unique keys hold."""
    invoice_events = [("evt_f", "invoice.finalized", snapshot("inv_1", "open", 900))] + [
        (f"evt_p{i}", "invoice.updated", snapshot("inv_1", "open", 900, 100 * i)) for i in range(1, 9)
    ] + [("evt_paid", "invoice.paid", snapshot("inv_1", "paid", 900, 900))]
    deliveries = invoice_events * 3

    async def deliver(event):
        for _ in range(50):  # what the worker's retry does for a racing writer
            try:
                return await apply(ledger_engine, *event)
            except Exception:
                await asyncio.sleep(0.01)
        raise AssertionError("never applied")

    results = await asyncio.gather(*(deliver(e) for e in deliveries))
    assert sum(r.outcome != "duplicate" for r in results) == len(invoice_events)
    row = await position(ledger_engine)
    assert (row.status, row.amount_paid, row.amount_due) == ("paid", 900, 0)
    async with ledger_engine.connect() as conn:
        balance = await trial_balance(conn)
    assert balance[("accounts_receivable", "EUR")][0] == 900  # finalized once
    assert balance[("vinr_clearing", "EUR")] == (900, 0)       # collected once
    assert balance[("accounts_receivable", "EUR")] == (900, 900)


async def _kinds(engine):
    async with engine.connect() as conn:
        return (await conn.execute(select(entries.c.kind))).all()
