"""Reconciliation while webhooks keep flowing (issues 15 and 23), through the real parts: VINR's
sandbox delivering to the real receiver app under uvicorn, the real Redis, the real worker
(`drain`: arq's worker with `vinr-recon worker`'s settings), and a real reconciliation run whose
client reaches the sandbox through `Pausing`, which holds one of VINR's answers back until a
webhook has been applied: the moment between VINR's answer and the run's correction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from conftest import PG_ADMIN_URL, _in_thread, unique
from ledger import outbox
from ledger.db import create_engine
from ledger.migrate import upgrade
from ledger.tables import Finding, InvoicePosition, JournalEntry, Notice, ReconciliationRun
from lifecycles import drain
from reconcile.lock import LOCK_LOST, LockLost, lock_key
from reconcile.run import Reconciler
from reconcile.service import reconcile_once
from reconcile_support import FAST, Deployment, deployment, ledger_equals_vinr
from vinr.client import VinrClient
from vinr.sandbox.app import create_app as create_sandbox
from vinr.sandbox.config import SandboxConfig
from vinr.sandbox.errors import CardError
from vinr.sandbox.serving import serve
from worker.render import drift

CARD, DECLINED = "4242424242424242", "4000000000000002"
positions, journal = InvoicePosition.__table__, JournalEntry.__table__
findings, runs, notices = Finding.__table__, ReconciliationRun.__table__, Notice.__table__
ALERTS = outbox.Channels(email=True, chat=True)


async def kinds(engine, invoice_id: str) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(journal.c.kind).where(journal.c.invoice_id == invoice_id)
                                        .order_by(journal.c.id))).scalars())


async def findings_of(engine, run_id: int):
    async with engine.connect() as conn:
        return (await conn.execute(select(findings).where(findings.c.run_id == run_id)
                                   .order_by(findings.c.id))).all()


async def drift_notices(engine, run_id: int):
    async with engine.connect() as conn:
        return (await conn.execute(select(notices).where(notices.c.key.like(f"drift:{run_id}:%")))).all()


# --- A webhook applied between VINR's answer and the correction (issue 15 item 1, issue 23) ------


async def test_a_webhook_applied_while_the_run_holds_a_page_is_not_rolled_back(ledger_settings, ledger_engine):
    async with deployment(ledger_settings, ledger_engine) as d:
        invoice = d.new_open(1000)
        await d.settle()
        assert (await d.position(invoice)).status == "open"

        async def paid_meanwhile():
            d.state.pay(invoice, CARD)
            await d.settle()
            assert (await d.position(invoice)).status == "paid"  # the webhook is in the ledger

        d.pausing.when = lambda path, answer: path == "/v1/invoices" and any(
            item["id"] == invoice and item["status"] == "open" for item in answer["data"])
        d.pausing.meanwhile = paid_meanwhile
        report = await Reconciler(d.engine, d.client, notices=ALERTS).run()

        assert d.pausing.held.is_set(), "the race was not staged"
        row = await d.position(invoice)
        assert (row.status, row.amount_paid, row.amount_due) == ("paid", 1000, 0)
        assert "payment_reversal" not in await kinds(d.engine, invoice)
        assert await findings_of(d.engine, report.run_id) == []
        assert report.matches and report.corrections_posted == 0 and report.caught_up == 1
        assert await drift_notices(d.engine, report.run_id) == []  # nothing to alert
        await ledger_equals_vinr(d)


async def test_a_webhook_applied_between_a_refetch_and_its_correction_is_not_rolled_back(
        ledger_settings, ledger_engine):
    async with deployment(ledger_settings, ledger_engine) as d:
        invoice = d.new_open(1000)
        await d.settle()
        d.state.quiet = True  # a partial payment whose webhook never comes
        d.state.pay(invoice, CARD, amount=300)
        d.state.quiet = False

        async def rest_paid_meanwhile():
            d.state.pay(invoice, CARD)
            await d.settle()
            assert (await d.position(invoice)).status == "paid"

        d.pausing.when = lambda path, answer: path == f"/v1/invoices/{invoice}"
        d.pausing.meanwhile = rest_paid_meanwhile
        # A window after everything: the open invoice is re-fetched on its own, not swept.
        report = await Reconciler(d.engine, d.client, notices=ALERTS).run(since=int(time.time()) + 3600)

        assert d.pausing.held.is_set(), "the race was not staged"
        row = await d.position(invoice)
        assert (row.status, row.amount_paid, row.amount_due) == ("paid", 1000, 0)
        assert "payment_reversal" not in await kinds(d.engine, invoice)
        assert await findings_of(d.engine, report.run_id) == []
        assert report.matches and report.caught_up == 1
        assert await drift_notices(d.engine, report.run_id) == []
        await ledger_equals_vinr(d)


async def test_a_webhook_truly_lost_is_one_invoice_in_the_findings_and_the_alert(ledger_settings, ledger_engine):
    async with deployment(ledger_settings, ledger_engine) as d:
        lost, fine = d.new_open(50_000), d.new_open(2_000)
        await d.settle()
        d.state.quiet = True
        d.state.pay(lost, CARD)  # paid at VINR; the webhook never comes
        d.state.quiet = False
        report = await Reconciler(d.engine, d.client, notices=ALERTS).run()

        found = await findings_of(d.engine, report.run_id)
        assert {f.invoice_id for f in found} == {lost}
        assert {(f.category, f.field) for f in found} == {
            ("status_mismatch", "status"), ("amount_mismatch", "amountPaid"), ("amount_mismatch", "amountDue")}
        assert all(f.corrected and f.entry_ids for f in found)
        async with d.engine.connect() as conn:
            corrected_by = set((await conn.execute(select(journal.c.run_id).where(
                journal.c.id.in_(found[0].entry_ids)))).scalars())
        assert corrected_by == {report.run_id}
        assert report.matches and report.caught_up == 0

        alerts = await drift_notices(d.engine, report.run_id)
        assert sorted(n.channel for n in alerts) == ["chat", "email"]
        alert = drift(alerts[0].payload)
        assert alert.subject == f"Reconciliation run {report.run_id} found 3 differences"
        listed = dict(alert.fields)
        assert listed[lost] == ("status: ledger open, VINR paid; amountPaid: ledger EUR 0.00, VINR EUR 500.00; "
                                "amountDue: ledger EUR 500.00, VINR EUR 0.00 (corrected)")
        assert fine not in listed
        await ledger_equals_vinr(d)


# --- A narrower run never moves the next window forward (issue 15 item 2) ------------------------


async def test_a_since_run_does_not_leave_a_gap_in_what_the_next_run_sweeps(ledger_engine):
    clock = [time.time() - 5 * 86400]
    sandbox_app = create_sandbox(SandboxConfig(rate_limit=0, clock=lambda: clock[0]))
    async with serve(sandbox_app) as root:
        state = sandbox_app.state.sandbox.state
        async with VinrClient(root + "/v1", sandbox_app.state.sandbox.api_key, retry=FAST) as client:
            day = timedelta(days=1)
            now = datetime.now(UTC)
            first = await Reconciler(ledger_engine, client).run(now=now - 5 * day)  # everything, 5 days ago
            assert first.matches and first.covered_until == int((now - 5 * day).timestamp())

            # Three days ago: an invoice paid at once, whose every webhook was lost. Final, it is in
            # no status-filtered list: only a sweep whose window reaches back to it can find it.
            clock[0] = (now - 3 * day).timestamp()
            state.quiet = True
            customer = state.create_customer(email="c@example.com", name="C", metadata={}).id
            inv = state.create_invoice(customer=customer, currency="EUR", collection_method="send_invoice",
                                       days_until_due=14, metadata={})
            state.add_line(inv.id, description="x", quantity=1, unit_amount=1234)
            state.finalize(inv.id)
            state.pay(inv.id, CARD)
            clock[0] = now.timestamp()

            narrow = await Reconciler(ledger_engine, client).run(since=int((now - timedelta(hours=1)).timestamp()),
                                                                 now=now - timedelta(minutes=1))
            assert narrow.matches and narrow.covered_until == first.covered_until  # it covered only an hour

            nightly = await Reconciler(ledger_engine, client).run(now=now)
            assert nightly.window_start == first.covered_until - 86400
            assert nightly.counts["missing_in_ledger"] == 1 and nightly.matches
            async with ledger_engine.connect() as conn:
                row = (await conn.execute(select(positions).where(positions.c.invoice_id == inv.id))).one()
            assert (row.status, row.amount_paid) == ("paid", 1234)
            assert nightly.covered_until == int(now.timestamp())


# --- One lock order for the run and a worker's batch, whatever the collation (issue 15 item 3) ---


@pytest.fixture
async def icu_ledger(settings):
    """Settings and an engine on a ledger database created with an ICU (en-US) collation."""
    name = unique("vinr_icu")
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f"""CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu
                                ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'""")
    finally:
        await admin.close()
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    try:
        _in_thread(upgrade, url)
        engine = create_engine(url)
        yield settings.model_copy(update={"database_url": url}), engine, name
        await engine.dispose()
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _waiting_on_locks(conn, database: str) -> int:
    return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                               database)


@pytest.mark.postgres
async def test_a_run_and_a_batch_lock_in_one_order_on_an_icu_database(icu_ledger):
    settings, engine, database = icu_ledger
    async with deployment(settings, engine) as d:
        # Two ids that en-US and code-point order sort differently: inv_a... < inv_B... < inv_a...
        d.state._namespace = "a"
        first = d.new_open(1000)
        d.state._namespace = "B"
        second = d.new_open(2000)
        await d.settle()
        d.state.quiet = True  # drift for the run to correct: payments whose webhooks are lost
        for invoice in (first, second):
            d.state.pay(invoice, CARD, amount=100)
        d.state.quiet = False

        admin = await asyncpg.connect(PG_ADMIN_URL)
        holder = await asyncpg.connect(f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{database}")
        try:
            deadlocks = await admin.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = $1", database)
            # Somebody (a third transaction) holds inv_a... while the batch and the run line up behind it.
            await holder.execute("BEGIN")
            await holder.execute("SELECT 1 FROM invoice_positions WHERE invoice_id = $1 FOR UPDATE", first)
            # The batch: a declined card on each invoice, whose webhooks one worker batch applies.
            for invoice in (first, second):
                with pytest.raises(CardError):
                    d.state.pay(invoice, DECLINED)
            await d.sandbox.deliveries_idle()
            batch = asyncio.create_task(drain(d.settings))
            await _until(lambda: _waiting_on_locks(admin, database), 1)
            run = asyncio.create_task(Reconciler(d.engine, d.client).run(since=int(time.time()) + 3600))
            await _until(lambda: _waiting_on_locks(admin, database), 2)
            await holder.execute("COMMIT")
            report = await run
            await batch
            after = await admin.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = $1", database)
        finally:
            await holder.close()
            await admin.close()

        assert after == deadlocks, "the run and the batch deadlocked"
        assert report.status == "completed" and report.matches
        await ledger_equals_vinr(d)


async def _until(count: Callable[[], Awaitable[int]], at_least: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while await count() < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} transactions waiting on a lock"
        await asyncio.sleep(0.02)


# --- Runs that die say so; a lost lock stops the run; an unreadable invoice is a finding (item 6) -


def _stall(d: Deployment, path: str) -> asyncio.Event:
    """VINR holds its answer for `path` until the returned event is set."""
    release = asyncio.Event()
    d.pausing.when = lambda p, answer: p == path
    d.pausing.meanwhile = release.wait
    return release


async def _run_row(engine, run_id: int | None = None):
    async with engine.connect() as conn:
        query = select(runs).order_by(runs.c.id.desc()).limit(1) if run_id is None else select(runs).where(
            runs.c.id == run_id)
        return (await conn.execute(query)).one()


async def test_a_run_cancelled_at_its_timeout_is_recorded_as_stopped_and_the_next_closes_a_dead_one(
        ledger_settings, ledger_engine):
    settings = ledger_settings.model_copy(update={"vinr_api_key": "vinr_test_key"})
    async with deployment(settings, ledger_engine) as d:
        d.new_open(1000)
        await d.settle()
        async with ledger_engine.begin() as conn:  # a run whose process was SIGKILLed long ago
            dead = await conn.scalar(runs.insert().values(started_at=datetime.now(UTC) - timedelta(hours=5),
                                                          status="running", counts={}).returning(runs.c.id))
        release = _stall(d, "/v1/invoices")
        redis = Redis.from_url(settings.redis_url)
        try:
            # As arq's job timeout does: the task is cancelled.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reconcile_once(settings, engine=ledger_engine, redis=redis, client=d.client),
                                       timeout=2.0)
        finally:
            release.set()
            await redis.aclose()
        assert d.pausing.held.is_set()
        stopped = await _run_row(ledger_engine)
        assert stopped.status in ("partial", "failed") and stopped.finished_at is not None
        assert stopped.message.startswith("stopped before the end: cancelled")
        closed = await _run_row(ledger_engine, dead)
        assert closed.status == "failed" and closed.message.startswith("did not finish")

        again = await Reconciler(ledger_engine, d.client).run()
        assert again.matches
        assert (await _run_row(ledger_engine, stopped.id)).status == stopped.status  # a finished run stays


async def test_a_run_that_loses_its_lock_stops_and_says_so(ledger_settings, ledger_engine):
    settings = ledger_settings.model_copy(update={"vinr_api_key": "vinr_test_key"})
    async with deployment(settings, ledger_engine) as d:
        d.new_open(1000)
        await d.settle()
        redis = Redis.from_url(settings.redis_url)
        key = lock_key(settings.queue_name)
        release = asyncio.Event()

        async def lock_taken_meanwhile():
            # The lock expired while Redis was unreachable, say, and another run took it.
            await redis.set(key, "another-run", px=30_000)
            await release.wait()

        d.pausing.when = lambda path, answer: path == "/v1/invoices"
        d.pausing.meanwhile = lock_taken_meanwhile
        try:
            with pytest.raises(LockLost):
                await asyncio.wait_for(reconcile_once(settings, engine=ledger_engine, redis=redis, client=d.client,
                                                      lock_ttl=0.6), timeout=10)
            assert await redis.get(key) == b"another-run"  # the other run's lock is left alone
        finally:
            release.set()
            await redis.delete(key)
            await redis.aclose()
        row = await _run_row(ledger_engine)
        assert row.status in ("partial", "failed") and row.message == f"stopped before the end: {LOCK_LOST}"


async def test_an_unreadable_invoice_in_vinrs_list_is_a_finding_and_the_run_goes_on(ledger_engine, ledger_settings):
    async with deployment(ledger_settings, ledger_engine) as d:
        broken, lost = d.new_open(1000), d.new_open(2000)
        await d.settle()
        d.state.quiet = True
        d.state.pay(lost, CARD)
        d.state.quiet = False

        def every_answer_naming_it(path: str, answer: dict) -> bool:
            return path in ("/v1/invoices", f"/v1/invoices/{broken}")

        def corrupt(path: str, answer: dict) -> dict:
            d.pausing.when = every_answer_naming_it  # the list and a fetch of its own, each time
            for item in answer.get("data", [answer]):
                if item["id"] == broken:
                    item["amountPaid"] = "a lot"
            return answer

        d.pausing.when = every_answer_naming_it
        d.pausing.rewrite = corrupt
        report = await Reconciler(d.engine, d.client).run()
        assert report.status == "completed" and not report.matches  # a person must look at it
        found = await findings_of(d.engine, report.run_id)
        unreadable = [f for f in found if f.invoice_id == broken]
        assert [(f.category, f.corrected) for f in unreadable] == [("unreadable_at_vinr", False)]
        assert "amountPaid" in unreadable[0].vinr_value
        assert {f.invoice_id for f in found if f.corrected} == {lost}  # the run went on past it
        assert (await d.position(lost)).status == "paid"


async def test_a_position_that_keeps_moving_is_left_unsettled_for_the_next_run(ledger_settings, ledger_engine):
    async with deployment(ledger_settings, ledger_engine) as d:
        invoice = d.new_open(10_000)
        await d.settle()
        d.state.quiet = True  # a lost partial payment: the first look sees a difference
        d.state.pay(invoice, CARD, amount=100)
        d.state.quiet = False

        def its_answer(path: str, answer: dict) -> bool:
            return path == f"/v1/invoices/{invoice}"

        async def another_payment_meanwhile():
            # Every answer, not just the first: a payment the ledger hears of, then one it does
            # not yet, so each fresh answer is behind the ledger by the time the run locks it.
            d.pausing.when = its_answer
            d.state.pay(invoice, CARD, amount=100)
            await d.settle()
            d.state.quiet = True
            d.state.pay(invoice, CARD, amount=100)
            d.state.quiet = False

        d.pausing.when = its_answer
        d.pausing.meanwhile = another_payment_meanwhile
        report = await Reconciler(d.engine, d.client).run(since=int(time.time()) + 3600)

        found = await findings_of(d.engine, report.run_id)
        assert [(f.invoice_id, f.category, f.corrected) for f in found] == [(invoice, "unsettled", False)]
        assert not report.matches and report.corrections_posted == 0
        assert "payment_reversal" not in await kinds(d.engine, invoice)
        d.pausing.when = lambda path, answer: False
        again = await Reconciler(d.engine, d.client).run(since=int(time.time()) + 3600)
        assert again.matches  # the next run, VINR standing still, sets it right
        await ledger_equals_vinr(d)
