"""Receivables aging (ledger.aging): the pure bucketing, and the one GROUP BY agreeing with it on
every boundary, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import insert

from ledger.aging import KEYS, UNASSIGNED, aging, bucket_of, days_past_due, due_range, parse_as_of, tabulate, worklist
from ledger.tables import Customer, InvoicePosition, ReceivedEvent

AS_OF = date(2026, 12, 2)


def at(day: date, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC).timestamp())


def ago(days: int, hour: int = 12) -> int:
    return at(AS_OF - timedelta(days=days), hour)


@pytest.mark.parametrize("due, key", [
    (None, "notDue"),
    (at(AS_OF + timedelta(days=10)), "notDue"),
    (at(AS_OF, 23, 59), "notDue"),  # due today: not yet past due
    (at(AS_OF), "notDue"),
    (at(AS_OF) - 1, "days1to30"),  # the last second of yesterday
    (ago(1), "days1to30"),
    (ago(30, 0), "days1to30"),
    (ago(30, 23), "days1to30"),
    (ago(31, 23), "days31to60"),
    (ago(60), "days31to60"),
    (ago(61), "days61to90"),
    (ago(90, 0), "days61to90"),
    (ago(91, 23), "over90"),
    (ago(4000), "over90"),
])
def test_an_invoice_falls_in_the_bucket_of_its_whole_days_past_due(due, key):
    assert bucket_of(due, AS_OF) == key
    if key != "notDue":
        low, high = due_range(key, AS_OF)
        assert (low is None or due >= low) and (high is None or due < high)


def test_days_are_counted_in_utc_days():
    assert days_past_due(at(AS_OF - timedelta(days=1), 23, 59), AS_OF) == 1
    assert days_past_due(at(AS_OF + timedelta(days=3)), AS_OF) == -3
    assert days_past_due(None, AS_OF) is None


def test_the_as_of_date_is_a_calendar_day_or_nothing():
    assert parse_as_of(None, AS_OF) == AS_OF
    assert parse_as_of("2026-11-30", AS_OF) == date(2026, 11, 30)
    for bad in ["2026-02-30", "20261130", "2026-11-30T00:00", "0001-01-01", "9999-12-31", "yesterday", "2026-1-3", ""]:
        assert parse_as_of(bad, AS_OF) is None, bad


def test_tabulate_sums_per_currency_and_per_manager():
    figures = tabulate(AS_OF, [("EUR", "a@x", "notDue", 100, 1), ("EUR", "b@x", "notDue", 50, 2),
                               ("EUR", "a@x", "over90", 7, 1), ("JPY", "a@x", "days1to30", 5000, 1)])
    (eur, jpy) = figures.currencies
    assert (eur.currency, eur.amounts["notDue"], eur.amounts["over90"], eur.total, eur.count, eur.overdue) == (
        "EUR", 150, 7, 157, 4, 7)
    assert jpy.amounts == {**dict.fromkeys(KEYS, 0), "days1to30": 5000}
    assert [(r.manager, r.currency, r.total) for r in figures.managers] == [
        ("a@x", "EUR", 107), ("a@x", "JPY", 5000), ("b@x", "EUR", 50)]
    answer = figures.as_json()
    assert answer["asOf"] == "2026-12-02" and [b["key"] for b in answer["buckets"]] == list(KEYS)
    assert answer["currencies"][0]["buckets"]["over90"] == {"amount": 7, "count": 1}


# --- against the database -----------------------------------------------------------------

def _position(n: int, **kw) -> dict:
    kw.setdefault("account_manager", None)
    return dict(invoice_id=f"in_age_{n:04d}", customer=kw.pop("customer", "cus_plain"), number=f"INV-{n:06d}",
                status=kw.pop("status", "open"), currency=kw.pop("currency", "EUR"), total=kw.get("amount_due", 0),
                amount_paid=0, created=kw.pop("created", ago(200)), version=1, **kw)


async def _seed(engine, rows, customers=()):
    async with engine.begin() as conn:
        if customers:
            await conn.execute(insert(Customer.__table__), [
                dict(id=c, name=f"Name of {c}", email=f"{c}@example.test", account_manager=m, metadata={},
                     refreshed_at=datetime.now(UTC)) for c, m in customers])
        await conn.execute(insert(InvoicePosition.__table__), rows)


async def test_the_query_buckets_as_the_pure_function_does(ledger_engine):
    rng = random.Random(20)
    # Due dates on and around every edge, plus random ones; statuses that count and that do not.
    near_edges = [at(AS_OF - timedelta(days=d)) + s for d in (0, 30, 60, 90) for s in (-1, 0, 1)]
    dues = near_edges + [None, None] + [ago(rng.randint(-40, 400), rng.randint(0, 23)) for _ in range(80)]
    rows = [_position(n, due_date=due, amount_due=rng.randint(1, 10_000), status=rng.choice(
        ["open", "open", "uncollectible", "paid", "void"]), currency=rng.choice(["EUR", "USD"]),
        account_manager=rng.choice([None, "", "am1@x"]), customer=rng.choice(["cus_m", "cus_plain"]))
        for n, due in enumerate(dues)]
    for row in rows:
        if row["status"] in ("paid", "void"):
            row["amount_due"] = 0
    rows.append(_position(999, due_date=ago(5), amount_due=777, created=at(AS_OF + timedelta(days=1))))  # later
    await _seed(ledger_engine, rows, customers=[("cus_m", "am2@x")])

    expected: dict = {}
    for row in rows[:-1]:
        if row["status"] not in ("open", "uncollectible"):
            continue
        manager = row["account_manager"] or ("am2@x" if row["customer"] == "cus_m" else "finance@x")
        key = (row["currency"], manager, bucket_of(row["due_date"], AS_OF))
        amount, count = expected.get(key, (0, 0))
        expected[key] = (amount + row["amount_due"], count + 1)

    async with ledger_engine.connect() as conn:
        figures = await aging(conn, AS_OF, "finance@x")
        each = {m: await aging(conn, AS_OF, "finance@x", manager=m) for m in ("am1@x", "am2@x", "finance@x", "")}
    got = {(r.currency, r.manager, k): (r.amounts[k], r.counts[k]) for r in figures.managers for k in KEYS
           if r.counts[k]}
    assert got == expected
    # One manager's figures (their own invoices, their customers', the default's) are their rows.
    for manager in ("am1@x", "am2@x", "finance@x"):
        mine = each[manager]
        assert [r.manager for r in mine.managers] == [manager] * len(mine.managers) and mine.managers
        assert {(r.currency, r.manager, k): (r.amounts[k], r.counts[k]) for r in mine.managers for k in KEYS
                if r.counts[k]} == {key: v for key, v in expected.items() if key[1] == manager}
    assert each[""].currencies == []


async def test_without_a_default_the_manager_is_unassigned(ledger_engine):
    await _seed(ledger_engine, [_position(1, due_date=ago(3), amount_due=500)])
    async with ledger_engine.connect() as conn:
        figures = await aging(conn, AS_OF, None)
    assert [(r.manager, r.amounts["days1to30"]) for r in figures.managers] == [(UNASSIGNED, 500)]


async def test_the_worklist_holds_the_failed_the_overdue_and_the_uncollectible(ledger_engine):
    await _seed(ledger_engine, [
        _position(1, due_date=ago(45), amount_due=100, account_manager="am@x"),           # overdue
        _position(2, due_date=ago(-5), amount_due=200, account_manager="am@x"),           # not yet due
        _position(3, due_date=ago(-5), amount_due=300, account_manager="am@x"),           # failed payment
        _position(4, due_date=None, amount_due=400, status="uncollectible", customer="cus_am"),
        _position(5, due_date=ago(10), amount_due=500, account_manager="other@x"),       # someone else's
        _position(6, due_date=ago(10), amount_due=0, status="paid", account_manager="am@x"),
    ], customers=[("cus_am", "am@x")])
    async with ledger_engine.begin() as conn:
        await conn.execute(insert(ReceivedEvent.__table__).values(
            event_id="evt_failed_3", type="invoice.payment_failed", invoice_id="in_age_0003", body=b"{}",
            headers={}, received_at=datetime.now(UTC), outcome="applied"))
    async with ledger_engine.connect() as conn:
        work, count = await worklist(conn, "am@x", AS_OF, None)
    assert count == 3
    assert [(w["invoice_id"], w["reasons"]) for w in work] == [
        ("in_age_0001", ["45 days overdue"]), ("in_age_0003", ["payment failed"]),
        ("in_age_0004", ["uncollectible"])]
    assert work[2]["customer_name"] == "Name of cus_am"
