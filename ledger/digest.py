"""The daily digest's facts: per account manager, the invoices to chase that day.

An invoice is on its manager's list when its customer still owes it (`open` or
`uncollectible`) and it is uncollectible (dunning gave up), its payment failed
(`attempt_count > 0`), or it is overdue (due before the day began: whole UTC days past due, as the
aging counts them). Its manager is the invoice's `accountManager`, else its customer's, else the
default (ALERT_DEFAULT_RECIPIENT); with none of the three it is on nobody's list. This is the
person its alerts go to (worker.notices.recipient).

Each invoice is in one section: uncollectible, else payment failed, else overdue; a manager reads
them in the order payment failed, overdue, uncollectible (written off already).
Lists are bounded (`LISTED` per manager, the most pressing first); the totals per currency count
every invoice on the list. Two queries, each bounded by the number of managers and `LISTED`,
whatever the size of the ledger.

Beside the list, `digests` gives each manager the matters closed since the last digest: the
invoices that alerted as payment failed (an outbox `payment_failed` notice that was not held or
resolved by a backfill) and that the ledger moved to paid (staged their paid callback) after that
digest was staged, and each listed failure's code, so a 3-D Secure challenge
(`authentication_required`) reads as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import ColumnElement, Join, and_, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.tables import customers, outbox, positions

FAILED, OVERDUE, UNCOLLECTIBLE = "payment_failed", "overdue", "uncollectible"
SECTIONS = (FAILED, OVERDUE, UNCOLLECTIBLE)  # in the order a manager reads them
OWING = ("open", "uncollectible")
LISTED = 100  # invoices listed per manager; the rest are counted in the totals


def day_start(day: date) -> int:
    """Unix seconds of 00:00 UTC on `day`."""
    return int(datetime.combine(day, time(), UTC).timestamp())


def section_of(status: str, attempt_count: int, due_date: int | None, day: date) -> str | None:
    """Which section of the digest of `day` an invoice is in, or None when it is on no list."""
    if status not in OWING:
        return None
    if status == "uncollectible":
        return UNCOLLECTIBLE
    if attempt_count > 0:
        return FAILED
    if due_date is not None and due_date < day_start(day):
        return OVERDUE
    return None


def days_overdue(due_date: int | None, day: date) -> int:
    """Whole UTC days from the due date to `day` (0 when not yet past due, or none)."""
    if due_date is None:
        return 0
    return max(0, (day - datetime.fromtimestamp(due_date, UTC).date()).days)


@dataclass(frozen=True)
class Chase:
    """One invoice on a manager's list."""

    invoice_id: str
    number: str | None
    customer: str | None
    customer_name: str | None
    customer_email: str | None
    status: str
    section: str
    currency: str
    amount_due: int
    total: int
    attempt_count: int
    due_date: int | None
    days_overdue: int


@dataclass(frozen=True)
class Resolved:
    """An invoice that alerted as payment failed and is paid now: the matter is closed."""

    invoice_id: str
    number: str | None
    customer: str | None
    customer_name: str | None
    customer_email: str | None
    currency: str
    amount_paid: int
    paid_at: int | None
    last_failure: str | None  # the code of its last alerted failure (authentication_required: 3-D Secure)


@dataclass
class Worklist:
    """One manager's list for one day: up to `LISTED` invoices, totals over all of them, and the
    invoices whose failed payment was paid since the last digest."""

    manager: str
    day: date
    invoices: list[Chase] = field(default_factory=list)
    count: int = 0
    totals: dict[str, int] = field(default_factory=dict)  # currency -> amount due
    last_failures: dict[str, str | None] = field(default_factory=dict)  # invoice id -> failure code
    resolved: list[Resolved] = field(default_factory=list)


# --- SQL -------------------------------------------------------------------------------------


def manager_of(default: str | None) -> ColumnElement[str]:
    """SQL (over positions outer-joined to customers, `_with_customers`): the invoice's manager,
    else its customer's, else `default` (NULL when none)."""
    return func.coalesce(func.nullif(positions.c.account_manager, ""), func.nullif(customers.c.account_manager, ""),
                         literal(default) if default else None)


def _with_customers() -> Join:
    return positions.outerjoin(customers, customers.c.id == positions.c.customer)


def _section_sql(day: date) -> ColumnElement[int]:
    """SQL twin of `section_of` (for invoices already filtered by `_on_a_list`): 0, 1, 2 in SECTIONS."""
    return case((positions.c.status == "uncollectible", 2), (positions.c.attempt_count > 0, 0), else_=1)


def _on_a_list(day: date) -> ColumnElement[bool]:
    return and_(positions.c.status.in_(OWING), or_(
        positions.c.attempt_count > 0,
        positions.c.status == "uncollectible",
        positions.c.due_date < day_start(day),
    ))


async def worklists(conn: AsyncConnection, day: date, default_manager: str | None,
                    listed: int = LISTED) -> list[Worklist]:
    """Every manager's list for `day` (only managers with something on it), by manager."""
    who = manager_of(default_manager)
    where = and_(_on_a_list(day), who.is_not(None))
    totals = (await conn.execute(
        select(who.label("manager"), positions.c.currency, func.sum(positions.c.amount_due), func.count())
        .select_from(_with_customers()).where(where).group_by(who, positions.c.currency)
    )).all()
    lists: dict[str, Worklist] = {}
    for manager, currency, amount, count in totals:
        worklist = lists.setdefault(manager, Worklist(manager, day))
        worklist.totals[currency] = int(amount or 0)
        worklist.count += int(count)
    if not lists:
        return []

    section = _section_sql(day)
    rank = func.row_number().over(
        partition_by=who,
        # The most pressing first: by section, then longest overdue, then largest amount.
        order_by=(section, positions.c.due_date.is_(None), positions.c.due_date, positions.c.amount_due.desc(),
                  positions.c.invoice_id),
    )
    ranked = (
        select(who.label("manager"), section.label("section"), rank.label("rank"),
               positions.c.invoice_id, positions.c.number, positions.c.customer, positions.c.status,
               positions.c.currency, positions.c.amount_due, positions.c.total, positions.c.attempt_count,
               positions.c.due_date, customers.c.name.label("customer_name"),
               customers.c.email.label("customer_email"))
        .select_from(_with_customers())
        .where(where)
        .subquery()
    )
    rows = (await conn.execute(
        select(ranked).where(ranked.c.rank <= listed).order_by(ranked.c.manager, ranked.c.rank)
    )).all()
    for row in rows:
        lists[row.manager].invoices.append(Chase(
            invoice_id=row.invoice_id, number=row.number, customer=row.customer,
            customer_name=row.customer_name, customer_email=row.customer_email, status=row.status,
            section=SECTIONS[row.section], currency=row.currency, amount_due=row.amount_due, total=row.total,
            attempt_count=row.attempt_count, due_date=row.due_date,
            days_overdue=days_overdue(row.due_date, day),
        ))
    return [lists[manager] for manager in sorted(lists)]


# --- Failures and what closed them (from the outbox's payment-failed notices) --------------------

# A notice a backfill held, or resolved before it went out, never reached anyone.
_NEVER_SENT = ("held", "resolved")


async def last_failures(conn: AsyncConnection, invoice_ids: list[str]) -> dict[str, str | None]:
    """Each invoice's last alerted payment failure's code (`authentication_required` for a 3-D
    Secure challenge); by the outbox's invoice index, so bounded by the invoices asked about."""
    found: dict[str, str | None] = {}
    for start in range(0, len(invoice_ids), 500):
        rows = await conn.execute(
            select(outbox.c.invoice_id, outbox.c.payload)
            .where(outbox.c.invoice_id.in_(invoice_ids[start:start + 500]), outbox.c.kind == FAILED)
            .order_by(outbox.c.id))
        for invoice_id, payload in rows:
            found[invoice_id] = ((payload or {}).get("failure") or {}).get("code")
    return found


async def last_digest_at(conn: AsyncConnection) -> datetime | None:
    """When the last digest was staged (any manager's: one job stages them all)."""
    staged_at: datetime | None = await conn.scalar(
        select(func.max(outbox.c.created_at)).where(outbox.c.kind == "digest"))
    return staged_at


async def resolved_since(conn: AsyncConnection, since: datetime, default_manager: str | None,
                         listed: int = LISTED) -> dict[str, list[Resolved]]:
    """Per manager, the invoices that alerted as payment failed and that the ledger moved to paid
    after `since` (the last digest), oldest payment first, up to `listed` each. When it moved
    them is when it staged their paid callback (once per invoice, on every path but an
    adoption's quiet history), not the position's `updated_at`, which a later change of a paid
    invoice (invoice.updated) moves too."""
    who = manager_of(default_manager)
    alerted = select(outbox.c.invoice_id).where(outbox.c.kind == FAILED, outbox.c.status.not_in(_NEVER_SENT))
    paid_since = select(outbox.c.invoice_id).where(outbox.c.kind == "paid", outbox.c.created_at > since)
    rows = (await conn.execute(
        select(who.label("manager"), positions.c.invoice_id, positions.c.number, positions.c.customer,
               positions.c.currency, positions.c.amount_paid, positions.c.paid_at,
               customers.c.name.label("customer_name"), customers.c.email.label("customer_email"))
        .select_from(_with_customers())
        .where(positions.c.status == "paid", positions.c.invoice_id.in_(paid_since), positions.c.invoice_id.in_(alerted),
               who.is_not(None))
        .order_by(who, positions.c.paid_at, positions.c.invoice_id)
        .limit(listed * 20)
    )).all()
    failures = await last_failures(conn, [row.invoice_id for row in rows])
    found: dict[str, list[Resolved]] = {}
    for row in rows:
        mine = found.setdefault(row.manager, [])
        if len(mine) < listed:
            mine.append(Resolved(row.invoice_id, row.number, row.customer, row.customer_name, row.customer_email,
                                 row.currency, row.amount_paid, row.paid_at, failures.get(row.invoice_id)))
    return found


async def digests(conn: AsyncConnection, day: date, now: datetime, default_manager: str | None,
                  listed: int = LISTED) -> list[Worklist]:
    """What each manager's digest of `day` holds: the list to chase (`worklists`), each listed
    failure's code, and what was resolved since the last digest (or the last day, before the
    first); a manager with only resolved invoices gets a digest too, to read that they are closed."""
    lists = {w.manager: w for w in await worklists(conn, day, default_manager, listed)}
    since = await last_digest_at(conn) or now - timedelta(days=1)
    for manager, closed in (await resolved_since(conn, since, default_manager, listed)).items():
        lists.setdefault(manager, Worklist(manager, day)).resolved = closed
    failed = [c.invoice_id for w in lists.values() for c in w.invoices if c.section == FAILED]
    codes = await last_failures(conn, failed) if failed else {}
    for worklist in lists.values():
        worklist.last_failures = {c.invoice_id: codes.get(c.invoice_id) for c in worklist.invoices
                                  if c.section == FAILED}
    return [lists[manager] for manager in sorted(lists)]
