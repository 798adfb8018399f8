"""The dashboard's reads: each one bounded (a limit, an index) so pages stay fast at 100,000 invoices."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TypedDict

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import ACCOUNTS, account_name
from ledger.book import trial_balance
from ledger.customers import CustomerName, customers_named, names_for, with_customer_names
from ledger.deadletters import waiting_count
from ledger.outbox import dead_count
from ledger.tables import AnyRow, dead_letters, findings, outbox, positions, received, runs

PAGE = 50
FAILED_DAYS = 7
STATUSES = ("draft", "open", "paid", "void", "uncollectible")


class AccountBalance(TypedDict):
    currency: str
    account: str
    name: str
    debits: int
    credits: int


class CurrencyMoney(TypedDict):
    currency: str
    invoiced: int
    collected: int
    receivable: int
    written_off: int
    credit: int


async def money_by_currency(conn: AsyncConnection) -> list[CurrencyMoney]:
    """Per currency, from the trial balance: invoiced, collected, still receivable, written off."""
    return money_from(await trial_balance(conn))


def account_balances(balances: dict[tuple[str, str], tuple[int, int]]) -> list[AccountBalance]:
    """The trial balance for people: per currency, each account by its name in the chart's order,
    its debits, credits and net (debits - credits, which the page shows as Dr or Cr)."""
    order = {account: i for i, account in enumerate(ACCOUNTS)}
    return [
        AccountBalance(currency=currency, account=account, name=account_name(account), debits=debits,
                       credits=credits)
        for (account, currency), (debits, credits) in sorted(
            balances.items(), key=lambda item: (item[0][1], order.get(item[0][0], len(order)), item[0][0]))
    ]


def money_from(balances: dict[tuple[str, str], tuple[int, int]]) -> list[CurrencyMoney]:
    table: dict[str, CurrencyMoney] = {}
    for (account, currency), (debits, credits) in balances.items():
        row = table.setdefault(currency, CurrencyMoney(currency=currency, invoiced=0, collected=0, receivable=0,
                                                       written_off=0, credit=0))
        if account == "revenue":
            row["invoiced"] = credits - debits
        elif account == "vinr_clearing":
            row["collected"] = debits - credits
        elif account == "accounts_receivable":
            row["receivable"] = debits - credits
        elif account == "bad_debt":
            row["written_off"] = debits - credits
        elif account == "customer_credit":
            row["credit"] = credits - debits
    return [table[currency] for currency in sorted(table)]


async def failed_payments(conn: AsyncConnection, now: datetime, days: int = FAILED_DAYS,
                          limit: int = 20) -> tuple[int, Sequence[AnyRow]]:
    """`invoice.payment_failed` events received in the last `days`, newest first, and how many."""
    since = now - timedelta(days=days)
    where = and_(received.c.type == "invoice.payment_failed", received.c.received_at >= since)
    count = (await conn.execute(select(func.count()).select_from(received).where(where))).scalar_one()
    rows = (await conn.execute(
        with_customer_names(
            select(received.c.event_id, received.c.invoice_id, received.c.received_at, received.c.created,
                   positions.c.number, positions.c.customer, positions.c.currency, positions.c.amount_due,
                   positions.c.status, positions.c.attempt_count)
            .select_from(received.outerjoin(positions, positions.c.invoice_id == received.c.invoice_id)),
            positions.c.customer)
        .where(where)
        .order_by(received.c.received_at.desc(), received.c.id.desc())
        .limit(limit)
    )).all()
    return count, rows


async def last_run(conn: AsyncConnection) -> AnyRow | None:
    return (await conn.execute(select(runs).order_by(runs.c.id.desc()).limit(1))).first()


async def waiting(conn: AsyncConnection) -> dict[str, int]:
    return {"letters": await waiting_count(conn), "notices": await dead_count(conn)}


async def _invoice_filter(conn: AsyncConnection, q: str, status: str | None,
                          narrowed: ColumnElement[bool] | None = None) -> ColumnElement[bool]:
    where: list[ColumnElement[bool]] = [positions.c.status.is_not(None)] + ([narrowed] if narrowed is not None else [])
    if q:
        # A customer's name or email is looked up first, so the list is by the customer index.
        named = await customers_named(conn, q)
        where.append(or_(positions.c.invoice_id == q, positions.c.number == q, positions.c.customer == q,
                         *([positions.c.customer.in_(named)] if named else [])))
    if status:
        where.append(positions.c.status == status)
    return and_(*where)


async def invoices(conn: AsyncConnection, q: str, status: str | None, page: int, per_page: int = PAGE,
                   narrowed: ColumnElement[bool] | None = None) -> tuple[Sequence[AnyRow], bool]:
    """One page of invoices, newest first (VINR's `created`), and whether another follows.

    Limit/offset over (status, created, invoice_id) and (created, invoice_id); a search matches an
    id, a number or a customer (its id, or its name or email ignoring case) exactly, each through
    its own index. Each row carries its customer's name and email (`customer_name`,
    `customer_email`) when the ledger has them.
    """
    rows = (await conn.execute(
        with_customer_names(
            select(positions.c.invoice_id, positions.c.number, positions.c.customer, positions.c.status,
                   positions.c.currency, positions.c.total, positions.c.amount_paid, positions.c.amount_due,
                   positions.c.created),
            positions.c.customer)
        .where(await _invoice_filter(conn, q, status, narrowed))
        .order_by(positions.c.created.desc(), positions.c.invoice_id.desc())
        .limit(per_page + 1)
        .offset((page - 1) * per_page)
    )).all()
    return rows[:per_page], len(rows) > per_page


async def invoice_count(conn: AsyncConnection, q: str, status: str | None,
                        narrowed: ColumnElement[bool] | None = None) -> int:
    """`narrowed`: a further clause (an aging cell, ledger.aging.invoice_filter)."""
    return (await conn.execute(select(func.count()).select_from(positions)
                               .where(await _invoice_filter(conn, q, status, narrowed)))).scalar_one()


async def customer_name(conn: AsyncConnection, customer_id: str | None) -> CustomerName | None:
    """How to show the customer `customer_id` (its name and email when the ledger has them)."""
    return (await names_for(conn, [customer_id])).get(customer_id) if customer_id else None


async def invoice_notices(conn: AsyncConnection, invoice_id: str) -> Sequence[AnyRow]:
    """The alerts and callbacks staged for the invoice (never their payload or last error)."""
    return (await conn.execute(
        select(outbox.c.id, outbox.c.channel, outbox.c.kind, outbox.c.status, outbox.c.attempts,
               outbox.c.created_at, outbox.c.sent_at)
        .where(outbox.c.invoice_id == invoice_id).order_by(outbox.c.id).limit(200)
    )).all()


async def invoice_findings(conn: AsyncConnection, invoice_id: str) -> Sequence[AnyRow]:
    return (await conn.execute(
        select(findings, runs.c.started_at)
        .join(runs, runs.c.id == findings.c.run_id)
        .where(findings.c.invoice_id == invoice_id).order_by(findings.c.id.desc()).limit(100)
    )).all()


async def run_list(conn: AsyncConnection, before: int | None, limit: int = PAGE) -> tuple[Sequence[AnyRow], bool]:
    query = select(runs).order_by(runs.c.id.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(runs.c.id < before)
    rows = (await conn.execute(query)).all()
    return rows[:limit], len(rows) > limit


async def run_with_findings(conn: AsyncConnection, run_id: int,
                            limit: int = 500) -> tuple[AnyRow | None, Sequence[AnyRow], int]:
    run = (await conn.execute(select(runs).where(runs.c.id == run_id))).first()
    if run is None:
        return None, [], 0
    count = (await conn.execute(
        select(func.count()).select_from(findings).where(findings.c.run_id == run_id))).scalar_one()
    rows = (await conn.execute(
        select(findings, positions.c.currency).join(positions, positions.c.invoice_id == findings.c.invoice_id,
                                                    isouter=True)
        .where(findings.c.run_id == run_id).order_by(findings.c.id).limit(limit))).all()
    return run, rows, count


async def dead_letter_list(conn: AsyncConnection,
                           limit: int = 100) -> tuple[Sequence[AnyRow], list[dict[str, Any]]]:
    """Letters waiting (oldest first) and the last ones replayed; never their body or headers."""
    letter = dead_letters.c
    columns = (letter.id, letter.event_id, letter.type, letter.error, letter.attempts, letter.dead_at,
               letter.replayed_at, received.c.invoice_id, received.c.outcome)
    joined = dead_letters.outerjoin(received, received.c.event_id == letter.event_id)
    pending = (await conn.execute(
        select(*columns).select_from(joined).where(letter.replayed_at.is_(None))
        .order_by(letter.id).limit(limit))).all()
    # A replay that died again left a newer letter of the same event (ledger.deadletters.bury):
    # shown beside the one it replaced, with its error, so a failed replay is never read as done.
    again = dead_letters.alias("again")
    next_letter = (select(again.c.id).where(again.c.event_id == letter.event_id, again.c.id > letter.id)
                   .order_by(again.c.id).limit(1).scalar_subquery())
    replayed_rows = (await conn.execute(
        select(*columns, next_letter.label("died_again_id")).select_from(joined)
        .where(letter.replayed_at.is_not(None))
        .order_by(letter.replayed_at.desc()).limit(20))).all()
    again_ids = [row.died_again_id for row in replayed_rows if row.died_again_id is not None]
    errors = dict((await conn.execute(select(letter.id, letter.error).where(letter.id.in_(again_ids)))).all()
                  ) if again_ids else {}
    replayed = [{**row._asdict(), "died_again_error": errors.get(row.died_again_id)} for row in replayed_rows]
    return pending, replayed


async def letter_event_id(conn: AsyncConnection, letter_id: int) -> str | None:
    return await conn.scalar(select(dead_letters.c.event_id).where(dead_letters.c.id == letter_id))
