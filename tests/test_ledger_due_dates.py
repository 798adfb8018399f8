"""The position keeps VINR's due date and the invoice's account manager, in both writers
(ledger.book one event at a time, ledger.batch a group at once), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from conftest import clear_ledger
from ledger.book import Received, apply_event, apply_events, apply_snapshot
from ledger.tables import InvoicePosition
from lifecycles import T0, Event, snapshot
from vinr.events import Invoice, parse_event

positions = InvoicePosition.__table__
DAY = 86_400

# Finalized due in 30 days for ana; then the merchant moves the due date and hands it to bo;
# then a thin payload (an older payload shape: no dueDate, no metadata); then partly paid.
LIFE = [
    Event("evt_1", "invoice.finalized",
          snapshot("inv_1", "open", 1000, dueDate=T0 + 30 * DAY, metadata={"accountManager": "ana@m.example"}), T0),
    Event("evt_2", "invoice.updated",
          snapshot("inv_1", "open", 1000, dueDate=T0 + 45 * DAY, metadata={"accountManager": "bo@m.example"}), T0 + 1),
    Event("evt_3", "invoice.payment_failed", snapshot("inv_1", "open", 1000, attempts=1), T0 + 2),
    Event("evt_4", "invoice.updated", snapshot("inv_1", "open", 1000, 400, dueDate=T0 + 45 * DAY,
                                               metadata={"accountManager": "bo@m.example", "projectId": "p"}), T0 + 3),
]


async def kept(engine, invoice_id="inv_1") -> tuple:
    async with engine.connect() as conn:
        row = (await conn.execute(select(positions).where(positions.c.invoice_id == invoice_id))).one()
    return row.due_date, row.account_manager


async def one_at_a_time(engine, events: list[Event]) -> list[tuple]:
    seen = []
    for event in events:
        async with engine.begin() as conn:
            await apply_event(conn, parse_event(event.body), event.body, {})
        seen.append(await kept(engine))
    return seen


async def in_one_batch(engine, events: list[Event]) -> None:
    parsed = [parse_event(e.body) for e in events]
    async with engine.begin() as conn:
        await apply_events(conn, [Received(p, p.invoice(), e.body, {}, datetime.now(UTC)) for p, e in zip(parsed, events)])


async def test_both_writers_keep_the_due_date_and_manager_vinr_last_sent(ledger_engine):
    seen = await one_at_a_time(ledger_engine, LIFE)
    assert seen == [
        (T0 + 30 * DAY, "ana@m.example"),
        (T0 + 45 * DAY, "bo@m.example"),
        (T0 + 45 * DAY, "bo@m.example"),  # a payload without the fields keeps what the ledger had
        (T0 + 45 * DAY, "bo@m.example"),
    ]
    await clear_ledger(ledger_engine)
    await in_one_batch(ledger_engine, LIFE)
    assert await kept(ledger_engine) == (T0 + 45 * DAY, "bo@m.example")


async def test_an_older_event_arriving_late_does_not_bring_back_the_old_due_date(ledger_engine):
    await one_at_a_time(ledger_engine, [LIFE[1], LIFE[0]])
    assert await kept(ledger_engine) == (T0 + 45 * DAY, "bo@m.example")


async def test_reconciliation_clears_a_manager_the_merchant_took_away(ledger_engine):
    await one_at_a_time(ledger_engine, LIFE[:1])
    now_at_vinr = Invoice.model_validate(snapshot("inv_1", "open", 1000, dueDate=None, metadata={}))
    async with ledger_engine.begin() as conn:
        await apply_snapshot(conn, now_at_vinr, source="reconciliation", authoritative=True)
    assert await kept(ledger_engine) == (None, None)


async def test_a_manager_no_text_column_holds_does_not_stop_the_booking(ledger_engine):
    hostile = Event("evt_9", "invoice.finalized",
                    snapshot("inv_9", "open", 700, metadata={"accountManager": "ana\x00@m.example"}), T0)
    await in_one_batch(ledger_engine, [hostile])
    async with ledger_engine.connect() as conn:
        row = (await conn.execute(select(positions).where(positions.c.invoice_id == "inv_9"))).one()
    assert (row.status, row.amount_due, row.account_manager) == ("open", 700, None)
