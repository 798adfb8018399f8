"""What the overview's charts draw: per UTC day and currency, the amounts invoiced and collected
(from the journal) and the failed payments (from the events received).

- invoiced: the credits to `revenue` of the entries effective that day (finalized invoices and
  upward amount changes; a void is not subtracted: it is not an invoice less sent)
- collected: the debits to `vinr_clearing` that day (payments, partial ones included)
- failed: the `invoice.payment_failed` events VINR created that day, each attempt once (a
  redelivery is the same event), in the currency of the invoice

Days are counted from the event's time (`effective_at`, `created`), not from when the ledger
heard of it, so a backfilled payment lands on the day it was made.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import ColumnElement, and_, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.tables import entries, positions, postings, received

SECONDS_PER_DAY = 86_400
# (account, direction) -> what the chart calls it
CHARTED = {("revenue", "credit"): "invoiced", ("vinr_clearing", "debit"): "collected"}


@dataclass(frozen=True)
class DayFigures:
    day: date
    invoiced: int = 0
    collected: int = 0
    failed: int = 0


def _day_of_timestamp(conn: AsyncConnection, column: ColumnElement[datetime]) -> ColumnElement[str]:
    """`YYYY-MM-DD` of a timestamp column, in UTC, as the database spells it."""
    if conn.dialect.name == "sqlite":
        return func.date(column)  # SQLite stores UTC text; date() reads it (and any offset)
    return func.to_char(func.timezone("UTC", column), literal_column("'YYYY-MM-DD'"))


async def daily_figures(conn: AsyncConnection, first: date, last: date) -> dict[str, list[DayFigures]]:
    """Per currency, one DayFigures per day from `first` to `last` (both UTC days, included),
    zeros where nothing happened; a currency appears once anything happened in it then."""
    since = datetime.combine(first, time.min, tzinfo=UTC)
    until = since + timedelta(days=(last - first).days + 1)
    figures: dict[tuple[str, date], dict[str, int]] = {}

    # The window's entries first, then their postings by entry id: left to itself, SQLite walks
    # every revenue and clearing posting of all time and looks each entry up (15x slower here).
    window = (
        select(entries.c.id, _day_of_timestamp(conn, entries.c.effective_at).label("day"))
        .where(entries.c.effective_at >= since, entries.c.effective_at < until)
        .cte("chart_window").prefix_with("MATERIALIZED")
    )
    # No condition on the postings themselves: one would let SQLite pick their account index and
    # walk all of history; every account and direction of the window is summed, and two kept.
    moved = await conn.execute(
        select(window.c.day, postings.c.currency, postings.c.account, postings.c.direction,
               func.sum(postings.c.amount))
        .select_from(window.join(postings, postings.c.entry_id == window.c.id))
        .group_by(window.c.day, postings.c.currency, postings.c.account, postings.c.direction)
    )
    for text, currency, account, direction, amount in moved:
        what = CHARTED.get((account, direction))
        if what:
            figures.setdefault((currency, date.fromisoformat(str(text)[:10])), {})[what] = int(amount)

    # Integer division on both databases: the UTC day number since 1970-01-01.
    epoch_day = (received.c.created // SECONDS_PER_DAY).label("epoch_day")
    failed = await conn.execute(
        select(epoch_day, positions.c.currency, func.count())
        .select_from(received.join(positions, positions.c.invoice_id == received.c.invoice_id))
        .where(and_(received.c.type == "invoice.payment_failed",
                    received.c.created >= int(since.timestamp()), received.c.created < int(until.timestamp()),
                    positions.c.currency.is_not(None)))
        .group_by(epoch_day, positions.c.currency)
    )
    for number, currency, count in failed:
        day_of = date(1970, 1, 1) + timedelta(days=int(number))
        slot = figures.setdefault((currency, day_of), {})
        slot["failed"] = slot.get("failed", 0) + int(count)

    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    return {
        currency: [DayFigures(d, **figures.get((currency, d), {})) for d in days]
        for currency in sorted({c for c, _ in figures})
    }
