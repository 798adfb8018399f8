"""Receivables aging: what customers owe, by how long it is past due, per currency and manager.

What is owed is `amount_due` of the invoices that are `open` or `uncollectible` (an uncollectible
invoice is written off in the books, but the customer still owes it and may still pay). Its age
is counted in whole UTC days from the due date to the day asked about (`as_of`): due that day or
later is "not yet due"; an invoice without a due date (VINR gives none to invoices charged
automatically) is "not yet due" too, and a failed charge shows on the manager's worklist instead.
Invoices created after `as_of` did not exist then and are left out; amounts are those the ledger
holds now.

An invoice's manager is its own `accountManager`, else its customer's, else the default
(ALERT_DEFAULT_RECIPIENT, or "unassigned"): the same person its alerts go to.

The bucketing is pure (`bucket_of`, `edges`); the SQL is one GROUP BY over invoice_positions
whose CASE uses the same edges, so Python and the database agree on every boundary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Join, and_, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.tables import AnyRow, customers, positions, received

owners = customers.alias("owner")  # the customer of the invoice, in manager_of

UNASSIGNED = "unassigned"
OWING = ("open", "uncollectible")
WORKLIST_LIMIT = 500


@dataclass(frozen=True)
class Bucket:
    key: str
    label: str
    first_day: int | None  # days past due, inclusive; None: open-ended
    last_day: int | None


BUCKETS = (
    Bucket("notDue", "Not yet due", None, 0),
    Bucket("days1to30", "1–30 days", 1, 30),
    Bucket("days31to60", "31–60 days", 31, 60),
    Bucket("days61to90", "61–90 days", 61, 90),
    Bucket("over90", "Over 90 days", 91, None),
)
KEYS = tuple(b.key for b in BUCKETS)


def day_start(day: date) -> int:
    """Unix seconds of 00:00 UTC on `day`."""
    return int(datetime.combine(day, time(), UTC).timestamp())


def days_past_due(due_date: int | None, as_of: date) -> int | None:
    """Whole days from the due date (its UTC day) to `as_of`; negative while not yet due."""
    if due_date is None:
        return None
    return (as_of - datetime.fromtimestamp(due_date, UTC).date()).days


def bucket_of(due_date: int | None, as_of: date) -> str:
    """The key of the bucket an invoice due at `due_date` (Unix seconds) falls in on `as_of`."""
    days = days_past_due(due_date, as_of)
    if days is None or days <= 0:
        return BUCKETS[0].key
    return next(b.key for b in BUCKETS[1:] if b.last_day is None or days <= b.last_day)


def edges(as_of: date) -> list[tuple[int, str]]:
    """(lowest due date, bucket) from the youngest bucket down: a due date at or above the edge
    (and below the one before) falls in that bucket; below every edge, the oldest bucket."""
    # Every bucket but the oldest has a last day.
    return [(day_start(as_of - timedelta(days=b.last_day)), b.key) for b in BUCKETS[:-1] if b.last_day is not None]


def due_range(key: str, as_of: date) -> tuple[int | None, int | None]:
    """[low, high) of the due dates in bucket `key` on `as_of` (None: unbounded)."""
    bounds = edges(as_of)
    index = KEYS.index(key)
    low = bounds[index][0] if index < len(bounds) else None
    high = bounds[index - 1][0] if index > 0 else None
    return low, high


FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(9999, 12, 30)
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_as_of(text: str | None, today: date) -> date | None:
    """`YYYY-MM-DD` (or no text at all: `today`) as a date; None for anything else or out of range."""
    if text is None:
        return today
    if not _ISO_DAY.fullmatch(text):
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return day if FIRST_DAY <= day <= LAST_DAY else None


def cutoff(as_of: date) -> int:
    """The first second after `as_of`: invoices created from then on are left out."""
    return day_start(as_of + timedelta(days=1))


# --- the tables of figures ----------------------------------------------------------------


@dataclass
class Row:
    """One currency (and manager): amount and count per bucket, and their totals."""

    currency: str
    manager: str | None = None
    amounts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KEYS, 0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KEYS, 0))

    @property
    def total(self) -> int:
        return sum(self.amounts.values())

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    @property
    def overdue(self) -> int:
        return self.total - self.amounts[KEYS[0]]

    def add(self, key: str, amount: int, count: int) -> None:
        self.amounts[key] += amount
        self.counts[key] += count

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"currency": self.currency}
        if self.manager is not None:
            answer["manager"] = self.manager
        return {**answer, "total": self.total, "count": self.count, "overdue": self.overdue,
                "buckets": {key: {"amount": self.amounts[key], "count": self.counts[key]} for key in KEYS}}


@dataclass
class Aging:
    as_of: date
    currencies: list[Row]
    managers: list[Row]

    def as_json(self) -> dict[str, Any]:
        return {
            "asOf": self.as_of.isoformat(),
            "buckets": [{"key": b.key, "label": b.label, "firstDay": b.first_day, "lastDay": b.last_day}
                        for b in BUCKETS],
            "currencies": [row.as_json() for row in self.currencies],
            "managers": [row.as_json() for row in self.managers],
        }


def tabulate(as_of: date, rows: Iterable[Sequence[Any]]) -> Aging:
    """(currency, manager, bucket, amount, count) rows into per-currency and per-manager tables."""
    by_currency: dict[str, Row] = {}
    by_manager: dict[tuple[str, str], Row] = {}
    for currency, manager, key, amount, count in rows:
        by_currency.setdefault(currency, Row(currency)).add(key, int(amount), int(count))
        by_manager.setdefault((manager, currency), Row(currency, manager)).add(key, int(amount), int(count))
    return Aging(as_of, [by_currency[c] for c in sorted(by_currency)],
                 [by_manager[k] for k in sorted(by_manager)])


# --- the SQL ---------------------------------------------------------------------------------


def manager_of(default: str | None) -> ColumnElement[str]:
    """SQL: the invoice's manager, else its customer's, else `default`, else "unassigned"; with
    `with_owners` as its FROM (a join, which PostgreSQL hashes, where a correlated lookup per
    invoice took twice as long)."""
    return func.coalesce(func.nullif(positions.c.account_manager, ""), func.nullif(owners.c.account_manager, ""),
                         literal(default or UNASSIGNED))


def with_owners() -> Join:
    return positions.outerjoin(owners, owners.c.id == positions.c.customer)


def managed_by(manager: str, default: str | None) -> ColumnElement[bool]:
    """SQL: `manager_of(default) == manager`, spelt so that the indexes on the invoice's and the
    customer's account_manager can find the invoices (the fallback to the default cannot)."""
    own = func.nullif(positions.c.account_manager, "")
    customers_of = select(customers.c.id).where(customers.c.account_manager == manager)
    managed = select(customers.c.id).where(func.nullif(customers.c.account_manager, "").is_not(None))
    either = [positions.c.account_manager == manager,
              and_(own.is_(None), positions.c.customer.in_(customers_of))]
    if manager == (default or UNASSIGNED):
        either.append(and_(own.is_(None), or_(positions.c.customer.is_(None),
                                              positions.c.customer.not_in(managed))))
    return or_(*either) if manager else literal(False)


def _bucket_sql(as_of: date) -> ColumnElement[str]:
    due = positions.c.due_date
    whens = [(due.is_(None), KEYS[0])] + [(due >= edge, key) for edge, key in edges(as_of)]
    return case(*whens, else_=literal(KEYS[-1]))


def owing(as_of: date) -> ColumnElement[bool]:
    """SQL: the invoices that count on `as_of`: still owed, and created by then."""
    return and_(positions.c.status.in_(OWING),
                or_(positions.c.created.is_(None), positions.c.created < cutoff(as_of)))


def in_bucket(key: str, as_of: date) -> ColumnElement[bool]:
    """SQL: the invoices of bucket `key` on `as_of` (with `owing`)."""
    low, high = due_range(key, as_of)
    due = positions.c.due_date
    where = []
    if low is not None:
        where.append(due >= low)
    if high is not None:
        where.append(due < high)
    clause = and_(*where)
    return or_(due.is_(None), clause) if key == KEYS[0] else clause


def invoice_filter(as_of: date, default_manager: str | None, key: str | None = None,
                   currency: str | None = None, manager: str | None = None) -> ColumnElement[bool] | None:
    """SQL: the invoices of one aging cell (`key` a bucket, or "all" for every one), narrowed to a
    currency and a manager when given; None when nothing narrows."""
    where = []
    if key is not None:
        where.append(owing(as_of))
        if key in KEYS:
            where.append(in_bucket(key, as_of))
    if currency:
        where.append(positions.c.currency == currency)
    if manager:
        where.append(managed_by(manager, default_manager))
    return and_(*where) if where else None


async def aging(conn: AsyncConnection, as_of: date, default_manager: str | None,
                manager: str | None = None) -> Aging:
    """The aging on `as_of`, per currency and per manager (only `manager`'s when given)."""
    who = manager_of(default_manager)
    owed = (select(positions.c.currency, who.label("manager"), _bucket_sql(as_of).label("bucket"),
                   positions.c.amount_due)
            .select_from(with_owners())
            .where(owing(as_of), *([managed_by(manager, default_manager)] if manager is not None else []))
            .subquery("owed"))
    # Grouped outside, so that each invoice's manager and bucket are computed once.
    rows = await conn.execute(
        select(owed.c.currency, owed.c.manager, owed.c.bucket, func.sum(owed.c.amount_due), func.count())
        .group_by(owed.c.currency, owed.c.manager, owed.c.bucket))
    return tabulate(as_of, rows.all())


def _failed_payment() -> ColumnElement[bool]:
    # Not correlated: the set of invoices with a failed payment is read once, through the index on
    # (type, received_at), rather than once per invoice (which SQLite did through the same index).
    return positions.c.invoice_id.in_(
        select(received.c.invoice_id).where(received.c.type == "invoice.payment_failed",
                                            received.c.invoice_id.is_not(None)))


async def worklist(conn: AsyncConnection, manager: str, as_of: date, default_manager: str | None,
                   limit: int = WORKLIST_LIMIT) -> tuple[list[dict[str, Any]], int]:
    """`manager`'s invoices to chase on `as_of`: a failed payment, past due, or uncollectible;
    longest overdue first. Returns up to `limit` of them and how many there are."""
    today = day_start(as_of)
    failed = _failed_payment().label("failed")
    where = and_(owing(as_of), managed_by(manager, default_manager),
                 or_(positions.c.status == "uncollectible", positions.c.due_date < today, _failed_payment()))
    rows = (await conn.execute(
        select(positions.c.invoice_id, positions.c.number, positions.c.customer, positions.c.status,
               positions.c.currency, positions.c.amount_due, positions.c.due_date, positions.c.attempt_count,
               customers.c.name.label("customer_name"), customers.c.email.label("customer_email"), failed)
        .select_from(positions.outerjoin(customers, customers.c.id == positions.c.customer))
        .where(where)
        .order_by(positions.c.due_date.is_(None), positions.c.due_date, positions.c.amount_due.desc(),
                  positions.c.invoice_id)
        .limit(limit)
    )).all()
    count = len(rows) if len(rows) < limit else (await conn.execute(
        select(func.count()).select_from(positions).where(where))).scalar_one()
    return [_work(row, as_of) for row in rows], count


def _work(row: AnyRow, as_of: date) -> dict[str, Any]:
    days = days_past_due(row.due_date, as_of)
    reasons = []
    if row.failed:
        reasons.append("payment failed")
    if days is not None and days > 0:
        reasons.append(f"{days} day{'s' if days != 1 else ''} overdue")
    if row.status == "uncollectible":
        reasons.append("uncollectible")
    return {"invoice_id": row.invoice_id, "number": row.number, "customer": row.customer,
            "customer_name": row.customer_name, "customer_email": row.customer_email, "status": row.status,
            "currency": row.currency, "amount_due": row.amount_due, "due_date": row.due_date,
            "due_day": None if row.due_date is None else datetime.fromtimestamp(row.due_date, UTC).date().isoformat(),
            "days_past_due": days, "bucket": bucket_of(row.due_date, as_of), "reasons": reasons}
