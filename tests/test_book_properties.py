"""Random lifecycles, delivered with duplicates and in any order: the books match VINR.

The staleness rule (the lifecycle's rank and amountPaid never go back) makes VINR's last
snapshot of an invoice the greatest one, so it is never judged stale: whatever the order, the
final position equals it.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import func, select

from conftest import clear_ledger
from ledger.audit import disagreements
from ledger.book import apply_event, trial_balance
from ledger.tables import InvoicePosition, Posting
from lifecycles import Event, lifecycles
from vinr.events import parse_event

positions, postings = InvoicePosition.__table__, Posting.__table__


@st.composite
def deliveries(draw, max_invoices: int) -> tuple[list[Event], list[Event]]:
    """(VINR's events of a few invoices, the same delivered with duplicates, shuffled)."""
    count = draw(st.integers(1, max_invoices))
    events = [e for i in range(count) for e in draw(lifecycles(f"inv_{i}"))]
    events.append(Event("evt_other", "customer.created", {"id": "cust_1", "object": "customer"}, 0))
    duplicates = draw(st.lists(st.sampled_from(events), max_size=len(events)))
    return events, draw(st.permutations(events + duplicates))


async def one_by_one(engine, delivered: list[Event]) -> list[str]:
    """Apply each delivery in a transaction of its own; their outcomes."""
    outcomes = []
    for event in delivered:
        async with engine.begin() as conn:
            outcomes.append((await apply_event(conn, parse_event(event.body), event.body, {})).outcome)
    return outcomes


async def check_books_match_vinr(engine, events: list[Event], delivered: list[Event], apply=None) -> None:
    """Deliver into an empty ledger (one by one, or with `apply()`), then check the books."""
    await clear_ledger(engine)
    outcomes = await (apply() if apply else one_by_one(engine, delivered))
    assert outcomes.count("duplicate") == len(delivered) - len(events)

    final = {e.invoice["id"]: e.invoice for e in events if e.type.startswith("invoice.")}  # VINR's last word
    async with engine.connect() as conn:
        rows = {row.invoice_id: row for row in await conn.execute(select(positions))}
        balance = await trial_balance(conn)
        rebuilt_differently = await disagreements(conn)  # every position is what its postings say
        unbalanced = (
            await conn.execute(
                select(postings.c.entry_id)
                .group_by(postings.c.entry_id)
                .having(func.sum(postings.c.amount).filter(postings.c.direction == "debit")
                        != func.sum(postings.c.amount).filter(postings.c.direction == "credit"))
            )
        ).all()

    for invoice_id, invoice in final.items():
        row = rows[invoice_id]
        assert (row.status, row.currency, row.total, row.amount_paid, row.amount_due) == (
            invoice["status"], invoice["currency"], invoice["total"], invoice["amountPaid"], invoice["amountDue"]
        ), invoice_id
    assert unbalanced == []
    assert rebuilt_differently == []

    per_currency: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (_, currency), (debits, credits) in balance.items():
        per_currency[currency][0] += debits
        per_currency[currency][1] += credits
    assert all(d == c for d, c in per_currency.values()), per_currency

    def net(account: str, currency: str) -> int:
        debits, credits = balance.get((account, currency), (0, 0))
        return debits - credits

    for currency in {i["currency"] for i in final.values()}:
        mine = [i for i in final.values() if i["currency"] == currency]
        assert net("accounts_receivable", currency) == sum(i["amountDue"] for i in mine if i["status"] == "open")
        assert net("vinr_clearing", currency) == sum(i["amountPaid"] for i in mine)
        # Contract section 6: credit grows by a negative total and, on void, by what the invoice had
        # collected and the credit it had used; it shrinks by the credit applied at finalize.
        owed = sum(-i["total"] for i in mine if i["total"] < 0 and i["status"] != "draft")
        owed += sum(i["amountPaid"] + i["appliedBalance"] for i in mine if i["status"] == "void")
        owed -= sum(i["appliedBalance"] for i in mine if i["status"] != "draft")
        assert -net("customer_credit", currency) == owed
        finalized = [i for i in mine if i["status"] in ("open", "paid", "uncollectible")]
        assert -net("revenue", currency) == sum(i["total"] for i in finalized)
        assert net("bad_debt", currency) == sum(i["amountDue"] for i in mine if i["status"] == "uncollectible")


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=deliveries(max_invoices=4))
async def test_any_order_with_duplicates_on_sqlite(ledger_engine, case):
    await check_books_match_vinr(ledger_engine, *case)


@pytest.mark.postgres
@pytest.mark.parametrize("ledger_url", ["postgresql"], indirect=True)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=deliveries(max_invoices=3))
async def test_any_order_with_duplicates_on_postgresql(ledger_engine, case):
    await check_books_match_vinr(ledger_engine, *case)
