"""A customer's credit and a void that reverses everything (issue 18), through the real parts:
the sandbox on a bad day (webhooks duplicated, shuffled, some dropped) delivering to the real
receiver, the real worker applying them, then a reconciliation that backfills what was dropped.
The expectations are computed from the sandbox's own state (contract section 6)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select, update

from ledger.audit import outdated, promises
from ledger.book import trial_balance
from ledger.tables import InvoicePosition, JournalEntry, Posting
from lifecycles import open_invoice
from reconcile.run import Reconciler
from reconcile_support import deployment, ledger_equals_vinr
from vinr.sandbox.config import SandboxConfig
from vinr.sandbox.errors import CardError
from vinr.sandbox.views import invoice_json

CARD, DECLINED = "4242424242424242", "4000000000000002"
BAD_DAY = SandboxConfig(rate_limit=0, seed=18, duplicate_rate=0.5, duplicate_count=2, reorder_delay=0.05,
                        drop_rate=0.2, old_shape_rate=0.3, snake_case_rate=0.3)
positions, journal, postings = InvoicePosition.__table__, JournalEntry.__table__, Posting.__table__


def section_6(state, hosted_base: str) -> dict[tuple[str, str], int]:
    """(account, currency) -> the balance contract section 6 promises, on the account's normal side."""
    promised: Counter = Counter()
    for inv in state.invoices:
        snap = invoice_json(inv, hosted_base)
        currency = snap["currency"]
        if snap["status"] == "open":
            promised["accounts_receivable", currency] += snap["amountDue"]
        if snap["status"] != "draft":
            promised["vinr_clearing", currency] += snap["amountPaid"]
        if snap["status"] in ("open", "paid", "uncollectible"):
            promised["revenue", currency] += snap["total"]
    for customer in state.customers:
        for currency, credit in customer.credit_balance.items():
            promised["customer_credit", currency] += credit
    return promised


def invoice(state, customer: str, *amounts: int, currency: str = "EUR") -> str:
    return open_invoice(state, customer, *amounts, currency=currency, description="line")


async def test_credit_rolls_into_the_next_invoices_and_a_void_gives_back_what_it_took(ledger_settings,
                                                                                     ledger_engine):
    async with deployment(ledger_settings, ledger_engine, BAD_DAY) as d:
        state, customer = d.state, d.customer
        other = state.create_customer(email="b@example.com", name="Beta AG", metadata={}).id

        invoice(state, customer, 20_000, -35_000)            # a proration: 15,000 EUR of credit
        larger = invoice(state, customer, 40_000)             # uses it, the rest paid by card
        state.pay(larger, CARD)
        covered = invoice(state, other, 9_000, -12_000)       # Beta: 3,000 EUR of credit...
        wholly = invoice(state, other, 2_500)                 # ...covers this one wholly: paid, no cash
        partly = invoice(state, other, 10_000)                # 500 of credit left, applied here
        state.pay(partly, CARD, amount=4_000)
        with pytest.raises(CardError):
            state.pay(partly, DECLINED)
        state.void(partly)                                    # 4,000 paid + 500 used: credit again
        after_void = invoice(state, other, 3_000)             # uses 3,000 of those 4,500
        chf = invoice(state, other, 7_000, currency="CHF")    # another currency uses none
        state.pay(chf, CARD, amount=1_000)

        snapshot = {i: invoice_json(state.invoice(i), "") for i in (larger, wholly, partly, after_void, chf)}
        assert snapshot[larger]["appliedBalance"] == 15_000 and snapshot[larger]["status"] == "paid"
        assert (snapshot[wholly]["status"], snapshot[wholly]["amountPaid"]) == ("paid", 0)
        assert snapshot[partly]["appliedBalance"] == 500 and snapshot[after_void]["appliedBalance"] == 3_000
        assert state.customer(other).credit_balance == {"EUR": 1_500}
        del covered

        await d.settle()
        report = await Reconciler(d.engine, d.client).run()  # backfills what the bad day dropped
        assert report.matches and report.events_backfilled > 0
        await ledger_equals_vinr(d)

        async with d.engine.connect() as conn:
            balances = await trial_balance(conn)
            kept = await promises(conn)
        promised = section_6(state, d.sandbox.config.hosted_base)
        for (account, currency), figure in promised.items():
            debits, credits = balances.get((account, currency), (0, 0))
            normal = credits - debits if account in ("revenue", "customer_credit") else debits - credits
            assert normal == figure, (account, currency)
        assert promised["customer_credit", "EUR"] == 1_500 and promised["accounts_receivable", "EUR"] == 0
        assert all(p.kept for p in kept), [p for p in kept if not p.kept]

        again = await Reconciler(d.engine, d.client).run()  # nothing left to correct
        assert again.matches and again.corrections_posted == 0 and sum(again.counts.values()) == 0


async def test_entries_of_the_old_void_rule_are_corrected_by_new_entries_and_db_check_says_so(
        ledger_settings, ledger_engine):
    async with deployment(ledger_settings, ledger_engine) as d:
        voided = invoice(d.state, d.customer, 10_000)
        d.state.pay(voided, CARD, amount=3_000)
        d.state.void(voided)
        await d.settle()
        # As the ledger before this rule posted it: the 3,000 collected stayed revenue.
        async with d.engine.begin() as conn:
            entry = await conn.scalar(insert(journal).values(
                idempotency_key=f"{voided}:old-rule", kind="adjustment", invoice_id=voided, currency="EUR",
                source="reconciliation", effective_at=datetime.now(UTC), recorded_at=datetime.now(UTC)).returning(journal.c.id))
            await conn.execute(insert(postings), [
                {"entry_id": entry, "account": "customer_credit", "direction": "debit", "amount": 3_000,
                 "currency": "EUR"},
                {"entry_id": entry, "account": "revenue", "direction": "credit", "amount": 3_000, "currency": "EUR"}])
            await conn.execute(update(positions).where(positions.c.invoice_id == voided).values(
                recognized=3_000, credited=0))
            before = list((await conn.execute(select(journal.c.id).order_by(journal.c.id))).scalars())
        async with d.engine.connect() as conn:
            assert await outdated(conn) == [voided]
            assert not all(p.kept for p in await promises(conn))

        report = await Reconciler(d.engine, d.client).run(since=d.state.now() + 3600)  # outside any window
        assert report.matches and report.counts["posting_rule"] == 1
        async with d.engine.connect() as conn:
            assert await outdated(conn) == []
            assert all(p.kept for p in await promises(conn))
            after = list((await conn.execute(select(journal.c.id).order_by(journal.c.id))).scalars())
        assert after[:len(before)] == before and len(after) > len(before)  # new entries, none edited
        await ledger_equals_vinr(d)
