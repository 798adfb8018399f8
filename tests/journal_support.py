"""Real traffic over three UTC days for the journal export, the balances as of a date and the
overview's charts (no tests here).

VINR's sandbox, on a clock the test sets, delivers to the real receiver (Redis, the real worker:
reconcile_support.deployment); the receiver accepts the older signatures because this test's
settings allow ten days of skew. After each day the books are computed from the sandbox's own
state by contract section 6, never from the ledger.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time as clock_time, timedelta

from reconcile_support import Deployment, deployment
from vinr.sandbox.config import SandboxConfig
from vinr.sandbox.errors import CardError
from vinr.sandbox.state import CARD_DECLINED, CARD_SUCCEEDS

TEN_DAYS = 10 * 86400


def books(state) -> dict[tuple[str, str], int]:
    """(account, currency) -> debits - credits, as contract section 6 says the ledger must stand
    for the sandbox's invoices and customers now; accounts at zero left out."""
    out: Counter = Counter()
    for inv in state.invoices:
        if inv.status == "draft":
            continue
        currency = inv.currency
        if inv.status == "open":
            out["accounts_receivable", currency] += inv.amount_due
        elif inv.status == "uncollectible":
            out["bad_debt", currency] += inv.amount_due
        if inv.status != "void":
            out["revenue", currency] -= inv.total
        out["vinr_clearing", currency] += inv.amount_paid
    for customer in state.customers:
        for currency, credit in customer.credit_balance.items():
            out["customer_credit", currency] -= credit
    return {key: value for key, value in out.items() if value}


@dataclass
class Traffic:
    d: Deployment
    days: list[date]
    # The books at the end of each day, from the sandbox.
    expected: dict[date, dict[tuple[str, str], int]] = field(default_factory=dict)
    # Per day and currency: invoiced (finalized totals), collected (payments) and failed payments.
    per_day: dict[tuple[date, str], Counter] = field(default_factory=dict)

    def count(self, day: date, currency: str, what: str, amount: int) -> None:
        self.per_day.setdefault((day, currency), Counter())[what] += amount


@asynccontextmanager
async def three_days(settings, engine):
    """The traffic of three days: three days ago, yesterday and today (UTC)."""
    now = [time.time()]
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=3), today - timedelta(days=1), today]
    settings = settings.model_copy(update={"vinr_webhook_tolerance": TEN_DAYS})
    async with deployment(settings, engine, SandboxConfig(rate_limit=0, clock=lambda: now[0])) as d:
        t = Traffic(d, days)
        state = d.state

        def new(currency: str, amount: int) -> str:
            inv = state.create_invoice(customer=d.customer, currency=currency, collection_method="send_invoice",
                                       days_until_due=14, metadata={"accountManager": "am@merchant.example"})
            state.add_line(inv.id, description="work", quantity=1, unit_amount=amount)
            state.finalize(inv.id)
            t.count(day, currency, "invoiced", amount)
            return inv.id

        def pay(invoice_id: str, amount: int | None = None) -> None:
            inv = state.invoice(invoice_id)
            paid = amount if amount is not None else inv.amount_due
            state.pay(invoice_id, CARD_SUCCEEDS, amount=amount)
            t.count(day, inv.currency, "collected", paid)

        def decline(invoice_id: str) -> None:
            try:
                state.pay(invoice_id, CARD_DECLINED)
            except CardError:
                t.count(day, state.invoice(invoice_id).currency, "failed", 1)
            else:
                raise AssertionError("the declined card was accepted")

        day = days[0]
        now[0] = datetime.combine(day, clock_time(12), tzinfo=UTC).timestamp()
        a = new("EUR", 10_000)
        pay(a)
        b = new("EUR", 5_000)
        decline(b)
        c = new("USD", 2_000)
        t.expected[day] = books(state)

        day = days[1]
        now[0] = datetime.combine(day, clock_time(9, 30), tzinfo=UTC).timestamp()
        pay(b, 2_000)
        state.mark_uncollectible(c)
        v = new("EUR", 3_000)
        pay(v, 1_000)  # then voided: what it collected becomes the customer's credit
        state.void(v)
        e = new("EUR", 7_000)
        decline(e)
        now[0] += 3600  # a second failure later that day: one day, two failures
        decline(e)
        t.expected[day] = books(state)

        day = days[2]
        now[0] = time.time()
        pay(b)
        new("EUR", 1_500)
        pay(c)  # the uncollectible invoice paid late
        t.expected[day] = books(state)

        await d.settle()
        yield t
