"""ledger.batch.apply_events: several events in one transaction, as if applied one by one."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import select

from conftest import clear_ledger
from ledger.book import PoisonInBatch, Received, apply_events
from ledger.posting import CannotApply
from ledger.tables import InvoicePosition, JournalEntry, Posting, ReceivedEvent
from lifecycles import Event, snapshot
from test_book_properties import check_books_match_vinr, deliveries, one_by_one
from vinr.events import parse_event
from worker.batching import Batcher

positions, entries, postings, received = (
    InvoicePosition.__table__, JournalEntry.__table__, Posting.__table__, ReceivedEvent.__table__
)


def item(event: Event) -> Received:
    parsed = parse_event(event.body)
    return Received(parsed, parsed.invoice() if parsed.is_invoice_event else None, event.body, {},
                    datetime(2026, 1, 1, tzinfo=UTC))


async def in_batches(engine, delivered: list[Event], sizes: list[int]) -> list[str]:
    outcomes, start = [], 0
    for size in sizes + [len(delivered)]:
        chunk = delivered[start:start + size]
        start += size
        if chunk:
            async with engine.begin() as conn:
                outcomes += [r.outcome for r in await apply_events(conn, [item(e) for e in chunk])]
    return outcomes


async def ledger_state(engine) -> tuple:
    """Everything the ledger holds, but the clock times that differ from run to run."""
    async with engine.connect() as conn:
        state = (
            (await conn.execute(select(positions).order_by(positions.c.invoice_id))).all(),
            (await conn.execute(
                select(entries.c.idempotency_key, entries.c.kind, entries.c.invoice_id, entries.c.currency,
                       entries.c.event_id, entries.c.effective_at, postings.c.account, postings.c.direction,
                       postings.c.amount, postings.c.currency)
                .join(postings, postings.c.entry_id == entries.c.id)
                .order_by(entries.c.idempotency_key, postings.c.direction)
            )).all(),
            (await conn.execute(
                select(received.c.event_id, received.c.type, received.c.invoice_id, received.c.outcome,
                       received.c.created, received.c.body)
                .order_by(received.c.event_id)
            )).all(),
        )
    positions_without_clock = [{k: v for k, v in row._mapping.items() if k != "updated_at"} for row in state[0]]
    return positions_without_clock, state[1], state[2]


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=deliveries(max_invoices=4), sizes=st.lists(st.integers(1, 12), max_size=6))
async def test_batches_leave_the_ledger_exactly_as_one_by_one(ledger_engine, case, sizes):
    events, delivered = case
    await clear_ledger(ledger_engine)
    single = await one_by_one(ledger_engine, delivered)
    expected = await ledger_state(ledger_engine)
    await clear_ledger(ledger_engine)
    batched = await in_batches(ledger_engine, delivered, sizes)
    assert batched == single
    assert await ledger_state(ledger_engine) == expected


@pytest.mark.postgres
@pytest.mark.parametrize("ledger_url", ["postgresql"], indirect=True)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=deliveries(max_invoices=3), sizes=st.lists(st.integers(1, 12), max_size=4))
async def test_batches_on_postgresql_keep_the_books(ledger_engine, case, sizes):
    events, delivered = case
    await clear_ledger(ledger_engine)
    single = await one_by_one(ledger_engine, delivered)
    expected = await ledger_state(ledger_engine)
    await check_books_match_vinr(ledger_engine, events, delivered, apply=lambda: in_batches(
        ledger_engine, delivered, sizes))
    assert await ledger_state(ledger_engine) == expected
    assert single.count("duplicate") == len(delivered) - len(events)


async def test_an_event_that_cannot_apply_aborts_the_batch_naming_it(ledger_engine):
    batch = [
        Event("evt_1", "invoice.finalized", snapshot("inv_a", "open", 1000), 1),
        Event("evt_2", "invoice.finalized", snapshot("inv_b", "open", 700), 2),
        Event("evt_3", "invoice.paid", snapshot("inv_a", "paid", 1000, 1000, currency="USD"), 3),
    ]
    with pytest.raises(PoisonInBatch) as raised:
        async with ledger_engine.begin() as conn:
            await apply_events(conn, [item(e) for e in batch])
    assert raised.value.index == 2 and isinstance(raised.value.error, CannotApply)
    async with ledger_engine.connect() as conn:
        assert (await conn.execute(select(received))).all() == []


async def test_the_batcher_sets_a_poison_event_apart_and_writes_the_others(ledger_engine):
    batcher = Batcher(ledger_engine, max_batch=10, linger=0.05)
    good = [Event(f"evt_{i}", "invoice.finalized", snapshot(f"inv_{i}", "open", 100 * i), i) for i in range(1, 4)]
    bad = Event("evt_x", "invoice.paid", snapshot("inv_1", "paid", 100, 100, currency="USD"), 9)
    results = await asyncio.gather(*(batcher.apply(item(e)) for e in [*good, bad]), return_exceptions=True)

    assert [r.outcome for r in results[:3]] == ["applied"] * 3
    assert isinstance(results[3], CannotApply)
    assert (batcher.transactions, batcher.events) == (1, 3)  # one batch, after one without the poison
    async with ledger_engine.connect() as conn:
        assert sorted((await conn.execute(select(received.c.event_id))).scalars()) == ["evt_1", "evt_2", "evt_3"]


def unchecked(received: Received, *, event: dict | None = None, invoice: dict | None = None) -> Received:
    """`received` with fields no parse would let through (model_copy does not validate): what
    only a bug could still hand the batch."""
    return replace(received, event=received.event.model_copy(update=event or {}),
                   invoice=received.invoice.model_copy(update=invoice or {}))


async def test_a_batch_the_database_refuses_is_tried_event_by_event(ledger_engine):
    from sqlalchemy.exc import DBAPIError

    batcher = Batcher(ledger_engine, max_batch=10, linger=0.05)
    good = [Event(f"evt_{i}", "invoice.finalized", snapshot(f"inv_{i}", "open", 100 * i), i) for i in range(1, 4)]
    # The parse now refuses a created beyond BIGINT: an attempt count beyond INTEGER gets by it here.
    bad = unchecked(item(Event("evt_x", "invoice.finalized", snapshot("inv_x", "open", 100), 2)),
                    invoice={"attempt_count": 2**63})
    results = await asyncio.gather(*(batcher.apply(i) for i in [item(good[0]), bad, *map(item, good[1:])]),
                                   return_exceptions=True)

    if ledger_engine.dialect.name == "postgresql":
        assert isinstance(results[1], DBAPIError) and "out of int32 range" in str(results[1].orig)
    else:  # the sqlite3 driver refuses to bind it, with no DBAPIError: set apart all the same
        assert isinstance(results[1], OverflowError), results[1]
    assert [r.outcome for r in results[:1] + results[2:]] == ["applied"] * 3
    async with ledger_engine.connect() as conn:
        assert sorted((await conn.execute(select(received.c.event_id))).scalars()) == ["evt_1", "evt_2", "evt_3"]


async def test_whatever_one_event_raises_aborts_the_batch_naming_it(ledger_engine):
    """Not only CannotApply: here a created no datetime holds (year 33658), past the parse."""
    batch = [item(Event("evt_1", "invoice.finalized", snapshot("inv_a", "open", 1000), 1)),
             unchecked(item(Event("evt_2", "invoice.finalized", snapshot("inv_b", "open", 700), 2)),
                       event={"created": 10**12})]
    with pytest.raises(PoisonInBatch) as raised:
        async with ledger_engine.begin() as conn:
            await apply_events(conn, batch)
    assert raised.value.index == 1 and "year 33658 is out of range" in str(raised.value.error)


async def test_the_batcher_sets_any_event_that_raises_apart_and_writes_the_others(ledger_engine):
    batcher = Batcher(ledger_engine, max_batch=10, linger=0.05)
    good = [item(Event(f"evt_{i}", "invoice.finalized", snapshot(f"inv_{i}", "open", 100 * i), i))
            for i in range(1, 4)]
    bad = unchecked(item(Event("evt_x", "invoice.finalized", snapshot("inv_x", "open", 100), 2)),
                    event={"created": 10**12})
    results = await asyncio.gather(*(batcher.apply(i) for i in [good[0], bad, *good[1:]]), return_exceptions=True)

    assert isinstance(results[1], ValueError) and "year 33658" in str(results[1])
    assert [r.outcome for r in results[:1] + results[2:]] == ["applied"] * 3
    assert (batcher.transactions, batcher.events) == (1, 3)
    async with ledger_engine.connect() as conn:
        assert sorted((await conn.execute(select(received.c.event_id))).scalars()) == ["evt_1", "evt_2", "evt_3"]
