"""Receivables aging through the real parts, on SQLite and PostgreSQL: VINR's sandbox delivers its
invoices' webhooks to the real receiver (uvicorn), the real worker applies them; then the aging
API, the aging page, its links to the invoice list and the account manager's page are compared
with buckets computed here from the sandbox's own invoices (their `dueDate` and `amountDue`).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import insert

from conftest import API_TOKEN
from ledger.money import format_money
from ledger.tables import Customer, InvoicePosition
from receiver.app import create_app
from receiver_support import served
from reconcile_support import deployment
from vinr.sandbox.errors import CardError
from vinr.sandbox.state import CARD_DECLINED, CARD_SUCCEEDS
from vinr.sandbox.views import invoice_json

DAY = 86400
AM1, AM2, FINANCE = "am1@merchant.example", "am2@merchant.example", "finance@merchant.example"
# The test's own statement of the buckets: (name in the API, last day past due in it).
LIMITS = [("notDue", 0), ("days1to30", 30), ("days31to60", 60), ("days61to90", 90), ("over90", None)]


def bucket(due_date: int | None, as_of: date) -> str:
    if due_date is None:
        return "notDue"
    days = (as_of - datetime.fromtimestamp(due_date, UTC).date()).days
    return next(name for name, last in LIMITS if last is None or days <= last)


@contextmanager
def back_in_time(state, days: float):
    """What the sandbox does meanwhile happens `days` ago (its deliveries are signed now)."""
    saved = state.clock
    moment = time.time() - days * DAY
    state.clock = lambda: moment
    try:
        yield
    finally:
        state.clock = saved


def make_invoices(d) -> None:
    """Invoices in every bucket, for three managers, in EUR and JPY; paid and void ones too."""
    state = d.state
    managed = state.create_customer(email="ap@globex.example", name="Globex", metadata={"accountManager": AM2}).id

    def invoice(customer, amount, finalized_days_ago, due_in_days, manager=None, currency="EUR", then=None):
        with back_in_time(state, finalized_days_ago):
            inv = state.create_invoice(customer=customer, currency=currency, collection_method="send_invoice",
                                       days_until_due=due_in_days,
                                       metadata={"accountManager": manager} if manager else {})
            state.add_line(inv.id, description="work", quantity=1, unit_amount=amount)
            state.finalize(inv.id)
            if then:
                then(inv.id)
        return inv.id

    invoice(d.customer, 10_000, 2, 14, AM1)                          # not yet due
    invoice(d.customer, 20_000, 24, 14, AM1)                         # 10 days past due
    invoice(d.customer, 30_000, 44, 14, AM1, then=lambda i: state.pay(i, CARD_SUCCEEDS, amount=12_345))
    invoice(managed, 40_000, 59, 14)                                 # 45 days, the customer's manager
    invoice(managed, 50_000, 89, 14, then=state.mark_uncollectible)  # 75 days, uncollectible
    invoice(d.customer, 60_000, 150, 30)                             # 120 days, nobody's: the default
    invoice(d.customer, 7_000, 60, 14, AM1, currency="JPY")          # 46 days, in yen
    invoice(d.customer, 8_000, 40, 14, AM1, then=lambda i: state.pay(i, CARD_SUCCEEDS))  # paid: not owed
    invoice(d.customer, 9_000, 40, 14, AM1, then=state.void)         # void: not owed

    def declined(invoice_id):
        with pytest.raises(CardError):
            state.pay(invoice_id, CARD_DECLINED)

    invoice(d.customer, 11_000, 1, 14, AM1, then=declined)           # not yet due, a failed payment


def expected_aging(d, as_of: date, customer_managers: dict) -> dict:
    """{(manager, currency): {bucket: (amount, count)}} from the sandbox's own invoices."""
    table: dict = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for inv in d.state.invoices:
        snap = invoice_json(inv, d.sandbox.config.hosted_base)
        if snap["status"] not in ("open", "uncollectible"):
            continue
        manager = snap["metadata"].get("accountManager") or customer_managers.get(snap["customer"]) or FINANCE
        cell = table[(manager, snap["currency"])][bucket(snap["dueDate"], as_of)]
        cell[0] += snap["amountDue"]
        cell[1] += 1
    return {key: {b: tuple(v) for b, v in cells.items()} for key, cells in table.items()}


def owed_by(d, manager: str, customer_managers: dict) -> list:
    """The sandbox's open and uncollectible invoices whose manager is `manager`."""
    return [inv for inv in d.state.invoices if inv.status in ("open", "uncollectible") and (
        inv.metadata.get("accountManager") or customer_managers.get(inv.customer) or FINANCE) == manager]


def per_currency(expected: dict) -> dict:
    table: dict = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for (_, currency), cells in expected.items():
        for name, (amount, count) in cells.items():
            table[currency][name][0] += amount
            table[currency][name][1] += count
    return {c: {b: tuple(v) for b, v in cells.items()} for c, cells in table.items()}


def nonzero(row: dict) -> dict:
    return {name: (cell["amount"], cell["count"]) for name, cell in row["buckets"].items() if cell["count"]}


@pytest.fixture
async def world(ledger_settings, ledger_engine):
    settings = ledger_settings.model_copy(update={"alert_default_recipient": FINANCE})
    async with deployment(settings, ledger_engine) as d:
        make_invoices(d)
        await d.settle()
        # The customers' managers, as reconciliation caches VINR's customers in the ledger.
        customers = {c.id: c for c in d.state.customers}
        async with ledger_engine.begin() as conn:
            await conn.execute(insert(Customer.__table__), [
                dict(id=c.id, name=c.name, email=c.email, account_manager=c.metadata.get("accountManager"),
                     metadata=dict(c.metadata), refreshed_at=datetime.now(UTC)) for c in customers.values()])
        managers = {c.id: c.metadata["accountManager"] for c in customers.values() if "accountManager" in c.metadata}
        async with served(create_app(d.settings)) as client:
            yield d, client, managers


async def sign_in(client) -> None:
    await client.get("/dashboard/signin")
    assert (await client.post("/dashboard/signin", data={"token": API_TOKEN, "next": "/dashboard/"})).status_code == 303


def cells_of(html: str, table_id: str) -> dict:
    """{(first cell, currency): {bucket: (text, href)}} of an aging table of a page."""
    table = re.search(rf'<table[^>]*id="{table_id}".*?</table>', html, re.S).group(0)
    rows = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S):
        if "<th" in tr:
            continue
        tds = re.findall(r"<td[^>]*?(?: data-bucket=\"(\w+)\")?>(.*?)</td>", tr, re.S)
        plain = [re.sub(r"<[^>]+>", "", text).strip() for _, text in tds]
        key = tuple(plain[:2]) if table_id == "managers" else (plain[0],)
        rows[key] = {name: (re.sub(r"<[^>]+>", "", text).strip(),
                            (re.search(r'href="([^"]+)"', text) or [None, None])[1])
                     for name, text in tds if name}
    return rows


async def test_the_api_ages_what_the_sandbox_says_is_owed(world):
    d, client, managers = world
    auth = {"authorization": f"Bearer {API_TOKEN}"}
    today = datetime.now(UTC).date()
    expected = expected_aging(d, today, managers)
    assert {b for cells in expected.values() for b in cells} == {name for name, _ in LIMITS}  # every bucket used

    answer = (await client.get("/api/aging", headers=auth)).json()
    assert answer["asOf"] == today.isoformat()
    assert {(r["manager"], r["currency"]): nonzero(r) for r in answer["managers"]} == expected
    assert {r["currency"]: nonzero(r) for r in answer["currencies"]} == per_currency(expected)

    # A month on, the same invoices are a month older.
    later = today + timedelta(days=31)
    answer = (await client.get(f"/api/aging?asOf={later}", headers=auth)).json()
    assert {(r["manager"], r["currency"]): nonzero(r) for r in answer["managers"]} == expected_aging(d, later, managers)
    # Before the invoices existed, nothing was owed.
    assert (await client.get(f"/api/aging?asOf={today - timedelta(days=400)}", headers=auth)).json()["currencies"] == []

    mine = (await client.get("/api/aging", params={"manager": AM2}, headers=auth)).json()
    assert [(r["manager"], r["currency"]) for r in mine["managers"]] == [(AM2, "EUR")]
    assert {r["currency"]: nonzero(r) for r in mine["currencies"]} == {"EUR": expected[(AM2, "EUR")]}

    assert (await client.get("/api/aging?asOf=2026-02-30", headers=auth)).status_code == 400
    assert (await client.get("/api/aging")).status_code == 401


async def test_the_aging_page_links_each_bucket_to_its_invoices(world):
    d, client, managers = world
    await sign_in(client)
    today = datetime.now(UTC).date()
    expected = expected_aging(d, today, managers)
    page = await client.get("/dashboard/aging")
    assert page.status_code == 200 and "Receivables aging" in page.text

    shown = cells_of(page.text, "aging")
    for currency, cells in per_currency(expected).items():
        row = shown[(currency,)]
        for name, _ in LIMITS:
            amount, count = cells.get(name, (0, 0))
            assert row[name][0] == format_money(amount, currency), (currency, name)
            if not count:
                assert row[name][1] is None
                continue
            # The cell's link lists exactly the invoices of that bucket.
            listed = await client.get(row[name][1].replace("&amp;", "&"))
            numbers = set(re.findall(r">(INV-\d{4}-\d{6})<", listed.text))
            owed = {inv.number for inv in d.state.invoices
                    if inv.status in ("open", "uncollectible") and inv.currency == currency
                    and bucket(invoice_json(inv, "")["dueDate"], today) == name}
            assert numbers == owed, (currency, name)

    by_manager = cells_of(page.text, "managers")
    assert set(by_manager) == set(expected)
    for (manager, currency), cells in expected.items():
        row = by_manager[(manager, currency)]
        for name, (amount, _) in cells.items():
            assert row[name][0] == format_money(amount, currency)
            listed = await client.get(row[name][1].replace("&amp;", "&"))
            numbers = set(re.findall(r">(INV-\d{4}-\d{6})<", listed.text))
            assert numbers == {inv.number for inv in owed_by(d, manager, managers)
                               if inv.currency == currency and bucket(invoice_json(inv, "")["dueDate"], today) == name}


async def test_the_managers_page_lists_what_to_chase(world):
    d, client, managers = world
    await sign_in(client)
    today = datetime.now(UTC).date()
    page = await client.get(f"/dashboard/managers/{AM1}")
    assert page.status_code == 200 and f"Worklist of {AM1}" in page.text
    worklist = re.search(r'<table id="worklist">.*?</table>', page.text, re.S).group(0)
    listed = set(re.findall(r'<tr id="work-([^"]+)">', worklist))
    chase = set()
    for inv in d.state.invoices:
        snap = invoice_json(inv, "")
        if snap["metadata"].get("accountManager") != AM1 or snap["status"] not in ("open", "uncollectible"):
            continue
        overdue = bucket(snap["dueDate"], today) != "notDue"
        if overdue or snap["status"] == "uncollectible" or snap["lastPaymentError"]:
            chase.add(inv.id)
    assert listed == chase and len(chase) == 4
    for invoice_id in chase:
        inv = d.state.invoice(invoice_id)
        row = re.search(rf'<tr id="work-{invoice_id}">(.*?)</tr>', worklist, re.S).group(1)
        assert format_money(inv.amount_due, inv.currency) in row and f"/dashboard/invoices/{invoice_id}" in row
    declined = next(i for i in chase if d.state.invoice(i).last_payment_error)
    assert "payment failed" in re.search(rf'<tr id="work-{declined}">(.*?)</tr>', worklist, re.S).group(1)
    assert (await client.get("/dashboard/managers/nobody@x.example")).status_code == 200


async def test_a_bucket_of_more_than_a_page_pages_within_the_bucket(ledger_settings, ledger_engine):
    """The invoice list's pager and search keep the aging filter: page 2 of a bucket is still it."""
    now = int(time.time())
    def owed(invoice_id, number, amount, created, due_date):
        return dict(invoice_id=invoice_id, customer="cus_many", number=number, status="open", currency="EUR",
                    total=amount, amount_paid=0, amount_due=amount, version=1, created=created, due_date=due_date,
                    account_manager=None)

    rows = [owed(f"in_page_{n:03d}", f"INV-2026-{n:06d}", 100 + n, now - 90 * DAY + n, now - 45 * DAY)
            for n in range(60)]
    rows.append(owed("in_page_other", "INV-2026-000999", 5, now, now - 5 * DAY))  # 1-30 days: another bucket
    async with ledger_engine.begin() as conn:
        await conn.execute(insert(InvoicePosition.__table__), rows)
    async with served(create_app(ledger_settings)) as client:
        await sign_in(client)
        first = await client.get("/dashboard/invoices?aging=days31to60&currency=EUR")
        assert "60 invoices" in first.text and "31–60 days past due" in first.text
        following = re.search(r'<a rel="next" href="([^"]+)"', first.text).group(1).replace("&amp;", "&")
        second = await client.get(following)
        numbers = set(re.findall(r">(INV-\d{4}-\d{6})<", second.text))
        assert len(numbers) == 10 and "INV-2026-000999" not in numbers
        # A search within the bucket finds only its invoices.
        searched = await client.get("/dashboard/invoices?aging=days31to60&currency=EUR&q=INV-2026-000999")
        assert "0 invoices" in searched.text
