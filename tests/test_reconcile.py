"""Reconciliation against the sandbox over real HTTP, the ledger on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextlib import asynccontextmanager
from datetime import UTC, timedelta

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ledger.book import apply_event, apply_snapshot, trial_balance
from ledger.tables import Finding, InvoicePosition, JournalEntry, ReceivedEvent, ReconciliationRun
from lifecycles import open_invoice
from reconcile.run import Reconciler
from reconcile.service import reconcile_once
from tests.conftest import REDIS_URL
from vinr.client import RetryPolicy, VinrClient
from vinr.events import Invoice, parse_event
from vinr.sandbox.app import create_app
from vinr.sandbox.config import EndpointConfig, SandboxConfig
from vinr.sandbox.errors import SandboxError
from vinr.sandbox.serving import serve
from vinr.sandbox.views import invoice_json
from vinr.signature import verify

SECRET = "whsec_reconcile_" + "r" * 20
FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01)


@asynccontextmanager
async def vinr(config: SandboxConfig = SandboxConfig(rate_limit=0)):
    """The sandbox on a loopback port, and a client for it."""
    app = create_app(config)
    async with serve(app) as root:
        sandbox = app.state.sandbox
        async with VinrClient(root + "/v1", sandbox.api_key, retry=FAST) as client:
            yield sandbox, client


def ledger_receiver(engine) -> Starlette:
    """Stands in for receiver + worker: verifies each delivery and applies it to the ledger."""

    async def webhook(request: Request):
        body = await request.body()
        verify(body, request.headers.get("x-vinr-signature"), [SECRET], int(time.time()))
        async with engine.begin() as conn:
            await apply_event(conn, parse_event(body), body, {})
        return JSONResponse({"received": True})

    return Starlette(routes=[Route("/webhooks/vinr", webhook, methods=["POST"])])


def lifecycle(state, customer: str, n: int) -> None:
    """A spread of the contract's lifecycles through the sandbox's own rules."""
    kind = n % 7
    inv = state.create_invoice(customer=customer, currency="EUR", collection_method="send_invoice",
                               days_until_due=14, metadata={})
    state.add_line(inv.id, description="work", quantity=1, unit_amount=1000 + n)
    if kind == 6:
        return  # stays a draft
    state.finalize(inv.id)
    try:
        if kind == 0:
            state.pay(inv.id, "4242424242424242")
        elif kind == 1:
            state.pay(inv.id, "4242424242424242", amount=300)
        elif kind == 2:
            state.pay(inv.id, "4000000000000002")
        elif kind == 3:
            state.pay(inv.id, "4242424242424242", amount=100)
            state.void(inv.id)
        elif kind == 4:
            state.mark_uncollectible(inv.id)
            state.pay(inv.id, "4242424242424242")
        elif kind == 5:
            state.mark_uncollectible(inv.id)
    except SandboxError:
        pass  # the declined card's payment_failed is what we wanted


async def ledger_agrees(engine, sandbox) -> None:
    positions = InvoicePosition.__table__
    async with engine.connect() as conn:
        rows = {r.invoice_id: r for r in await conn.execute(select(positions))}
        balances = await trial_balance(conn)
    for inv in sandbox.state.invoices:
        snap = invoice_json(inv, sandbox.config.hosted_base)
        if snap["status"] == "draft" and inv.id not in rows:
            continue
        row = rows[inv.id]
        assert (row.status, row.total, row.amount_paid, row.amount_due) == (
            snap["status"], snap["total"], snap["amountPaid"], snap["amountDue"]), inv.id
    for currency in {c for _, c in balances}:
        debits = sum(d for (_, c), (d, _) in balances.items() if c == currency)
        credits = sum(k for (_, c), (_, k) in balances.items() if c == currency)
        assert debits == credits
    open_due = sum(r.amount_due for r in rows.values() if r.status == "open")
    d, k = balances.get(("accounts_receivable", "EUR"), (0, 0))
    assert d - k == open_due


async def count(engine, table, *where) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(table).where(*where))


async def test_bad_day_webhooks_then_one_run_makes_the_ledger_agree(ledger_engine):
    app = ledger_receiver(ledger_engine)
    async with serve(app) as receiver_root:
        config = SandboxConfig(
            rate_limit=0, seed=7, drop_rate=0.2, duplicate_rate=0.3, duplicate_count=2, reorder_delay=0.05,
            old_shape_rate=0.3, snake_case_rate=0.3,
            endpoints=(EndpointConfig(receiver_root + "/webhooks/vinr", (SECRET,)),),
        )
        async with vinr(config) as (sandbox, client):
            customer = sandbox.state.create_customer(email="ops@acme.example", name="Acme GmbH", metadata={})
            for n in range(60):
                lifecycle(sandbox.state, customer.id, n)
            await sandbox.deliveries_idle()
            first = await Reconciler(ledger_engine, client).run()
            assert first.status == "completed" and first.matches
            assert first.events_backfilled > 0, "20 % of webhooks were dropped: the run must recover them"
            await ledger_agrees(ledger_engine, sandbox)
            second = await Reconciler(ledger_engine, client).run()
            assert second.matches and sum(second.counts.values()) == 0 and second.corrections_posted == 0


async def test_each_drift_category_is_found_with_its_values_and_corrected(ledger_engine):
    async with vinr() as (sandbox, client):
        state = sandbox.state
        state.quiet = True  # no events to backfill: only the sweep can find these
        customer = state.create_customer(email="a@b.example", name="B", metadata={}).id

        def new_open(amount):
            return open_invoice(state, customer, amount, description="x")

        missing, stale, partial, currency = (new_open(a) for a in (1000, 2000, 3000, 4000))
        async with ledger_engine.begin() as conn:
            for invoice_id in (stale, partial, currency):
                await apply_snapshot(conn, parse_invoice(state, invoice_id), source="webhook")
            ghost = parse_invoice(state, currency).model_copy(update={"id": "inv_ghost"})
            await apply_snapshot(conn, ghost, source="webhook")
            wrong = parse_invoice(state, currency).model_copy(update={"currency": "USD"})
            await apply_snapshot(conn, wrong, source="webhook", authoritative=True)
        state.pay(stale, "4242424242424242")
        state.pay(partial, "4242424242424242", amount=500)

        dry = await Reconciler(ledger_engine, client, dry_run=True).run()
        entries_before = await count(ledger_engine, JournalEntry.__table__)
        assert dry.counts == {"missing_in_ledger": 1, "status_mismatch": 1, "amount_mismatch": 4,
                              "currency_mismatch": 1, "missing_at_vinr": 1}
        assert dry.corrections_posted == 0 and not dry.matches
        assert await count(ledger_engine, JournalEntry.__table__) == entries_before

        run = await Reconciler(ledger_engine, client).run()
        async with ledger_engine.connect() as conn:
            found = {(f.invoice_id, f.category, f.field, f.ledger_value, f.vinr_value, f.corrected)
                     for f in await conn.execute(select(Finding.__table__).where(Finding.__table__.c.run_id == run.run_id))}
        assert found == {
            (missing, "missing_in_ledger", "status", None, "open", True),
            (stale, "status_mismatch", "status", "open", "paid", True),
            (stale, "amount_mismatch", "amountPaid", "0", "2000", True),
            (stale, "amount_mismatch", "amountDue", "2000", "0", True),
            (partial, "amount_mismatch", "amountPaid", "0", "500", True),
            (partial, "amount_mismatch", "amountDue", "3000", "2500", True),
            (currency, "currency_mismatch", "currency", "USD", "EUR", True),
            ("inv_ghost", "missing_at_vinr", "status", "open", None, False),
        }
        assert not run.matches, "an invoice VINR does not know is left for a person to look at"
        corrections = JournalEntry.__table__.c
        assert await count(ledger_engine, JournalEntry.__table__, corrections.source == "reconciliation",
                           corrections.run_id == run.run_id) == run.corrections_posted > 0
        async with ledger_engine.connect() as conn:
            balances = await trial_balance(conn)
        for currency_code in ("EUR", "USD"):
            assert sum(d - k for (_, c), (d, k) in balances.items() if c == currency_code) == 0
        # The USD booking is fully reversed in USD.
        assert balances[("accounts_receivable", "USD")][0] == balances[("accounts_receivable", "USD")][1]


def parse_invoice(state, invoice_id) -> Invoice:
    return Invoice.model_validate(invoice_json(state.invoice(invoice_id), "https://pay.vinr.com"))


async def test_a_dropped_event_is_backfilled_once(ledger_engine):
    async with vinr() as (sandbox, client):
        state = sandbox.state
        customer = state.create_customer(email="a@b.example", name="B", metadata={}).id
        lifecycle(state, customer, 2)  # finalize, then a declined card: invoice.payment_failed
        events = ReceivedEvent.__table__
        await Reconciler(ledger_engine, client).run()
        backfilled = await count(ledger_engine, events, events.c.source == "backfill")
        assert backfilled == len(state.events) > 0
        assert await count(ledger_engine, events, events.c.type == "invoice.payment_failed") == 1
        again = await Reconciler(ledger_engine, client).run()
        assert again.events_backfilled == 0
        assert await count(ledger_engine, events) == backfilled


async def test_vinr_failing_midway_ends_partial_and_the_next_run_posts_nothing_twice(ledger_engine):
    async with vinr(SandboxConfig(rate_limit=0, seed=3)) as (sandbox, client):
        state = sandbox.state
        customer = state.create_customer(email="a@b.example", name="B", metadata={}).id
        for n in range(120):
            lifecycle(state, customer, n)
        sandbox.config = dataclasses.replace(sandbox.config, error_rate=0.2)
        impatient = VinrClient(client.base_url, sandbox.api_key, retry=RetryPolicy(max_attempts=1))
        async with impatient:
            broken = await Reconciler(ledger_engine, impatient).run()
        # The injected failures are 500s and 429s: VINR answered, with a failure; it is named so.
        assert broken.status == "partial" and broken.message.startswith(
            ("VINR failed: 500", "VINR kept refusing for the rate limit (429)")), broken.message
        assert broken.invoices_checked + broken.events_backfilled > 0
        sandbox.config = dataclasses.replace(sandbox.config, error_rate=0.0)
        fixed = await Reconciler(ledger_engine, client).run()
        assert fixed.status == "completed" and fixed.matches
        await ledger_agrees(ledger_engine, sandbox)
        entries = JournalEntry.__table__
        async with ledger_engine.connect() as conn:
            per_fact = (await conn.execute(
                select(entries.c.invoice_id, entries.c.kind, func.count())
                .group_by(entries.c.invoice_id, entries.c.kind).having(func.count() > 1)
            )).all()
        assert per_fact == [], "no fact may be posted twice across the two runs"


async def test_two_runs_started_together_one_is_skipped(ledger_settings):
    async with vinr() as (sandbox, client):
        state = sandbox.state
        customer = state.create_customer(email="a@b.example", name="B", metadata={}).id
        for n in range(40):
            lifecycle(state, customer, n)
        settings = ledger_settings.model_copy(update={"vinr_api_key": SecretStr(sandbox.api_key)})
        from ledger.db import create_engine

        engine = create_engine(settings.database_url)
        redis = Redis.from_url(REDIS_URL)
        try:
            results = await asyncio.gather(*(
                reconcile_once(settings, engine=engine, redis=redis, client=client) for _ in range(2)
            ))
        finally:
            await redis.aclose()
            await engine.dispose()
        assert sorted(r is None for r in results) == [False, True]


async def test_the_next_run_sweeps_from_the_last_one_less_a_day_and_refetches_older_open_invoices(ledger_engine):
    """Run 2's sweep lists only invoices created since run 1 started, less a day's overlap; an
    invoice older than that which the ledger holds as open is fetched on its own, and old final
    ones are not read again."""
    moment = [time.time() - 10 * 86400]
    async with vinr(SandboxConfig(rate_limit=0, clock=lambda: moment[0])) as (sandbox, client):
        state = sandbox.state
        customer = state.create_customer(email="a@b.example", name="B", metadata={}).id

        def invoice(amount: int) -> str:
            return open_invoice(state, customer, amount)

        old_open = invoice(5000)
        for n in range(5):
            state.pay(invoice(1000 + n), "4242424242424242")  # old and final
        first = await Reconciler(ledger_engine, client).run()
        assert first.status == "completed" and first.window_start is None and first.invoices_checked == 6

        moment[0] = time.time()
        state.quiet = True  # VINR records no event: only a fetch of the invoice can see these
        state.pay(old_open, "4242424242424242")
        new_open = invoice(7000)
        state.quiet = False
        second = await Reconciler(ledger_engine, client).run()

    async with ledger_engine.connect() as conn:
        started = await conn.scalar(select(ReconciliationRun.__table__.c.started_at)
                                    .where(ReconciliationRun.__table__.c.id == first.run_id))
        found = {(f.invoice_id, f.category) for f in await conn.execute(
            select(Finding.__table__).where(Finding.__table__.c.run_id == second.run_id))}
    started = started if started.tzinfo else started.replace(tzinfo=UTC)
    assert second.window_start == int((started - timedelta(days=1)).timestamp())
    assert second.invoices_checked == 2  # the new one by the sweep, the old open one by its fetch
    assert found == {(new_open, "missing_in_ledger"), (old_open, "status_mismatch"), (old_open, "amount_mismatch")}
    assert second.status == "completed" and second.matches


async def test_a_dry_run_reports_what_the_real_run_then_corrects_and_changes_nothing(ledger_engine):
    """Issue 21: a dry run is a faithful preview. Events the backfill would record are not
    differences (the real run closes them by applying the events, and finds nothing there); what
    the real run corrects, the dry run reports, one for one, and it writes nothing."""
    async with vinr() as (sandbox, client):
        state = sandbox.state
        customer = state.create_customer(email="a@b.example", name="B", metadata={}).id

        def invoice(amount: int) -> str:
            return open_invoice(state, customer, amount)

        drifted, lost_webhook = invoice(5000), invoice(6000)
        assert (await Reconciler(ledger_engine, client).run()).matches  # the ledger holds both as open
        state.quiet = True  # VINR records no event: only the invoice shows the payment
        state.pay(drifted, "4242424242424242")
        state.quiet = False
        state.pay(lost_webhook, "4242424242424242")  # its invoice.paid is never delivered
        never_delivered = invoice(7000)
        with pytest.raises(SandboxError):
            state.pay(never_delivered, "4000000000000002")

        positions = InvoicePosition.__table__

        async def books():
            async with ledger_engine.connect() as conn:
                return (await conn.scalar(select(func.count()).select_from(JournalEntry.__table__)),
                        sorted(tuple(r) for r in await conn.execute(select(
                            positions.c.invoice_id, positions.c.status, positions.c.amount_paid, positions.c.version))))

        before = await books()
        preview = await Reconciler(ledger_engine, client, dry_run=True).run()
        assert await books() == before
        real = await Reconciler(ledger_engine, client).run()

    async def found(run_id: int) -> set:
        async with ledger_engine.connect() as conn:
            return {(f.invoice_id, f.category, f.field) for f in await conn.execute(
                select(Finding.__table__).where(Finding.__table__.c.run_id == run_id))}

    assert await found(preview.run_id) == await found(real.run_id) == {
        (drifted, "status_mismatch", "status"), (drifted, "amount_mismatch", "amountPaid"),
        (drifted, "amount_mismatch", "amountDue")}
    assert preview.counts == real.counts and preview.events_backfilled == real.events_backfilled > 0
    assert not preview.matches and real.matches
