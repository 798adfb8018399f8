"""Rebuilding every invoice's position from its postings: the proof that the position table is
derived from the journal, not a second truth beside it.

Each fact of a position (ledger.posting) is the net of the invoice's postings on one account:

    recognized    revenue          credits - debits
    amountPaid    vinr_clearing    debits - credits
    written off   bad_debt         debits - credits
    credit owed   customer_credit  credits - debits  (credited less what the invoice applied)

and what is still receivable (accounts_receivable, debits - credits) is `amountDue` while the
invoice is open, 0 otherwise. `disagreements` rebuilds these for every invoice in one grouped
query and returns the invoices whose stored position differs, with both figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.posting import AR, BAD_DEBT, CLEARING, CREDIT, REVENUE
from ledger.tables import entries, positions, postings

FIELDS = ("recognized", "amount_paid", "written_off", "credited", "receivable")


@dataclass(frozen=True)
class Disagreement:
    invoice_id: str
    status: str | None
    field: str
    stored: int
    posted: int


def _net(account: str, sign: int) -> ColumnElement[int]:
    """sign × (debits - credits) of the invoice's postings on `account`."""
    signed = case((postings.c.direction == "debit", postings.c.amount), else_=-postings.c.amount)
    return sign * func.coalesce(func.sum(case((postings.c.account == account, signed), else_=0)), 0)


async def disagreements(conn: AsyncConnection, limit: int = 1000) -> list[Disagreement]:
    """Invoices whose stored position is not what their postings say (none, in a sound ledger)."""
    posted = {
        "recognized": _net(REVENUE, -1),
        "amount_paid": _net(CLEARING, 1),
        "written_off": _net(BAD_DEBT, 1),
        "credited": _net(CREDIT, -1),
        "receivable": _net(AR, 1),
    }
    stored = {
        "recognized": positions.c.recognized,
        "amount_paid": positions.c.amount_paid,
        "written_off": positions.c.written_off,
        "credited": positions.c.credited - positions.c.applied_balance,
        "receivable": case((positions.c.status == "open", positions.c.amount_due), else_=0),
    }
    query = (
        select(positions.c.invoice_id, positions.c.status,
               *(stored[f].label(f"stored_{f}") for f in FIELDS), *(posted[f].label(f"posted_{f}") for f in FIELDS))
        .select_from(positions
                     .outerjoin(entries, entries.c.invoice_id == positions.c.invoice_id)
                     .outerjoin(postings, postings.c.entry_id == entries.c.id))
        .group_by(positions.c.invoice_id)  # its primary key: the other columns follow from it
        .having(or_(*(stored[f] != posted[f] for f in FIELDS)))
        .order_by(positions.c.invoice_id)
        .limit(limit)
    )
    found = []
    for row in (await conn.execute(query)).mappings():
        for f in FIELDS:
            if row[f"stored_{f}"] != row[f"posted_{f}"]:
                found.append(Disagreement(row["invoice_id"], row["status"], f, int(row[f"stored_{f}"]),
                                          int(row[f"posted_{f}"])))
    return found


async def postings_without_position(conn: AsyncConnection) -> int:
    """Entries naming an invoice the position table does not hold (none, in a sound ledger)."""
    orphan = and_(entries.c.invoice_id.is_not(None), positions.c.invoice_id.is_(None))
    return (await conn.execute(
        select(func.count()).select_from(
            entries.outerjoin(positions, positions.c.invoice_id == entries.c.invoice_id)).where(orphan))).scalar_one()


# --- The posting rule's facts for what each position holds, in SQL (ledger.posting.target_facts) -

_status = positions.c.status
_EXPECTED = {
    "recognized": case((_status.in_(("draft", "void")), 0), else_=positions.c.total),
    "credited": case((_status == "void", positions.c.amount_paid + positions.c.applied_balance),
                     (_status == "paid", case((positions.c.total < 0, -positions.c.total), else_=0)), else_=0),
    "written_off": case((_status == "uncollectible", positions.c.amount_due), else_=0),
}


async def outdated(conn: AsyncConnection, limit: int | None = None) -> list[str]:
    """Invoices whose posted facts are not what the posting rule says for their position: entries
    posted under an earlier rule (before 0006 a void kept what it had collected as revenue). The
    next reconciliation posts what moves each to the rule."""
    differs = or_(*(positions.c[name] != expected for name, expected in _EXPECTED.items()))
    query = (select(positions.c.invoice_id).where(_status.is_not(None), differs)
             .order_by(positions.c.invoice_id).limit(limit))
    return list((await conn.execute(query)).scalars())


@dataclass(frozen=True)
class Promise:
    """One account's balance in one currency beside what contract section 6 says it must be."""

    currency: str
    account: str
    posted: int     # the account's balance, on its normal side (debits - credits, or the reverse)
    promised: int   # the figure section 6 derives from the invoices' VINR fields

    @property
    def kept(self) -> bool:
        return self.posted == self.promised


# account: (sign of debits - credits on its normal side, what section 6 says it holds)
_PROMISED = {
    AR: (1, case((_status == "open", positions.c.amount_due), else_=0)),
    CLEARING: (1, case((_status.is_(None), 0), else_=positions.c.amount_paid)),
    REVENUE: (-1, case((_status.in_(("open", "paid", "uncollectible")), positions.c.total), else_=0)),
    CREDIT: (-1, case((_status.in_(("draft",)) | _status.is_(None), 0), else_=(
        case((_status == "paid", case((positions.c.total < 0, -positions.c.total), else_=0)), else_=0)
        + case((_status == "void", positions.c.amount_paid + positions.c.applied_balance), else_=0)
        - positions.c.applied_balance))),
    BAD_DEBT: (1, case((_status == "uncollectible", positions.c.amount_due), else_=0)),
}


async def promises(conn: AsyncConnection) -> list[Promise]:
    """Per currency, each account's balance and contract section 6's figure for it: receivable =
    amountDue of open invoices, clearing = amountPaid, revenue = total of finalized invoices not
    void, customer credit = negative totals and voids' collected and used credit less the credit
    applied, bad debt = amountDue of uncollectible invoices."""
    signed = case((postings.c.direction == "debit", postings.c.amount), else_=-postings.c.amount)
    posted = {(account, currency): int(net) for account, currency, net in await conn.execute(
        select(postings.c.account, postings.c.currency, func.sum(signed)).group_by(postings.c.account,
                                                                                   postings.c.currency))}
    by_currency = await conn.execute(
        select(positions.c.currency, *(func.coalesce(func.sum(expected), 0) for _, expected in _PROMISED.values()))
        .where(positions.c.currency.is_not(None)).group_by(positions.c.currency).order_by(positions.c.currency))
    found = []
    for currency, *figures in by_currency:
        for (account, (sign, _)), promised in zip(_PROMISED.items(), figures, strict=True):
            found.append(Promise(currency, account, sign * posted.get((account, currency), 0), int(promised)))
    return found
