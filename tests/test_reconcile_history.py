"""Reconciliation on an account with history (issue 19): invoices created before the window are
read as status-filtered list pages, not fetched one by one, and a full sweep now and then finds
what neither the window nor the Events API can. Against the sandbox over real HTTP, the ledger on
SQLite and PostgreSQL."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from ledger.tables import Finding, InvoicePosition
from reconcile.run import PAGE, Reconciler
from reconcile_support import FAST
from vinr.client import VinrClient
from vinr.sandbox.app import create_app
from vinr.sandbox.config import SandboxConfig
from vinr.sandbox.serving import serve

CARD = "4242424242424242"
DAY = 86_400
positions, findings = InvoicePosition.__table__, Finding.__table__


class World:
    """The sandbox with a clock the test sets, quiet (no events: only the sweeps can find drift)."""

    def __init__(self, app):
        self.sandbox = app.state.sandbox
        self.state = self.sandbox.state
        self.state.quiet = True
        self.customer = self.state.create_customer(email="ap@old.example", name="Old AG", metadata={}).id

    def invoice(self, status: str, amount: int = 1_000) -> str:
        inv = self.state.create_invoice(customer=self.customer, currency="EUR", collection_method="send_invoice",
                                        days_until_due=14, metadata={})
        self.state.add_line(inv.id, description="x", quantity=1, unit_amount=amount)
        if status == "draft":
            return inv.id
        self.state.finalize(inv.id)
        if status == "paid":
            self.state.pay(inv.id, CARD)
        elif status == "uncollectible":
            self.state.mark_uncollectible(inv.id)
        return inv.id

    def count(self, status: str, before: int) -> int:
        return sum(1 for inv in self.state.invoices if inv.status == status and inv.created < before)


async def by_invoice(engine, run_id: int) -> dict[str, set[tuple[str, str]]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(findings).where(findings.c.run_id == run_id))
        found: dict[str, set[tuple[str, str]]] = {}
        for row in rows:
            found.setdefault(row.invoice_id, set()).add((row.category, row.field))
        return found


async def test_old_invoices_are_compared_through_status_lists_at_a_page_per_hundred(ledger_engine):
    clock = [time.time() - 10 * DAY]
    app = create_app(SandboxConfig(rate_limit=0, clock=lambda: clock[0]))
    async with serve(app) as root:
        world = World(app)
        ids = {status: [world.invoice(status) for _ in range(n)]
               for status, n in (("open", 130), ("uncollectible", 60), ("draft", 30), ("paid", 40))}
        async with VinrClient(root + "/v1", world.sandbox.api_key, retry=FAST) as client:
            now = datetime.now(UTC)
            clock[0] = now.timestamp()
            first = await Reconciler(ledger_engine, client).run(now=now)  # books the history
            assert first.matches and first.counts["missing_in_ledger"] == 230  # drafts are no drift

            # Ten days back again: what changed at VINR without a webhook, and one never booked.
            clock[0] = now.timestamp() - 10 * DAY
            partly, marked, settled = ids["open"][0], ids["open"][1], ids["open"][2]
            world.state.pay(partly, CARD, amount=400)
            world.state.mark_uncollectible(marked)
            world.state.pay(settled, CARD)  # final now: in no status list, fetched on its own
            late_paid = ids["uncollectible"][0]  # likewise
            world.state.pay(late_paid, CARD)
            never_booked = world.invoice("open", 7_000)
            clock[0] = now.timestamp()

            later = now + timedelta(days=2)  # the window starts a day before the first run: all are older
            second = await Reconciler(ledger_engine, client).run(now=later)
            assert second.window_start == int(now.timestamp()) - DAY and second.matches

        found = await by_invoice(ledger_engine, second.run_id)
        assert found == {
            partly: {("amount_mismatch", "amountPaid"), ("amount_mismatch", "amountDue")},
            marked: {("status_mismatch", "status")},
            settled: {("status_mismatch", "status"), ("amount_mismatch", "amountPaid"),
                      ("amount_mismatch", "amountDue")},
            late_paid: {("status_mismatch", "status"), ("amount_mismatch", "amountPaid"),
                        ("amount_mismatch", "amountDue")},
            never_booked: {("missing_in_ledger", "status")},
        }
        async with ledger_engine.connect() as conn:
            rows = {r.invoice_id: r for r in await conn.execute(select(positions))}
        for inv in world.state.invoices:
            if inv.status != "draft":
                assert (rows[inv.id].status, rows[inv.id].amount_paid, rows[inv.id].amount_due) == (
                    inv.status, inv.amount_paid, inv.amount_due), inv.id

        # The cost: an events page, the window's page, a page per hundred of each not-final
        # status before the window, and one request per invoice that changed unheard.
        window = second.window_start
        pages = 1 + 1 + sum(max(1, math.ceil(world.count(s, window) / PAGE)) for s in ("open", "uncollectible",
                                                                                       "draft"))
        changed = 4  # a fresh answer for each of partly and marked, a fetch of its own for settled and late_paid
        assert second.api_requests <= math.ceil(1.05 * pages) + changed, (second.api_requests, pages)
        assert second.invoices_checked < 260  # not one request per open invoice of the ledger


async def test_a_full_sweep_now_and_then_finds_what_no_window_reaches(ledger_engine):
    clock = [time.time() - 40 * DAY]
    app = create_app(SandboxConfig(rate_limit=0, clock=lambda: clock[0]))
    async with serve(app) as root:
        world = World(app)
        world.invoice("open")
        async with VinrClient(root + "/v1", world.sandbox.api_key, retry=FAST) as client:
            now = datetime.now(UTC)
            weekly = timedelta(days=7)
            first = await Reconciler(ledger_engine, client, full_sweep_every=weekly).run(now=now - 8 * DAY_DELTA)
            assert first.window_start is None
            # The ledger never saw this one (say, lost in a restore), paid 40 days ago: final, in no
            # status list, outside every window, its events expired.
            clock[0] = time.time() - 40 * DAY
            lost = world.invoice("paid", 4_200)
            clock[0] = time.time()

            nightly = await Reconciler(ledger_engine, client, full_sweep_every=weekly).run(now=now - 6 * DAY_DELTA)
            assert nightly.window_start is not None and nightly.counts["missing_in_ledger"] == 0
            full = await Reconciler(ledger_engine, client, full_sweep_every=weekly).run(now=now)
            assert full.window_start is None  # eight days since the last full sweep
            assert full.counts["missing_in_ledger"] == 1 and full.matches
            again = await Reconciler(ledger_engine, client, full_sweep_every=weekly).run(now=now + DAY_DELTA)
            assert again.window_start is not None  # the next week's sweep is not due yet
        async with ledger_engine.connect() as conn:
            row = (await conn.execute(select(positions).where(positions.c.invoice_id == lost))).one()
        assert (row.status, row.amount_paid) == ("paid", 4_200)


DAY_DELTA = timedelta(days=1)
