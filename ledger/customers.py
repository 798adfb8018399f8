"""The ledger's copy of VINR's customers: a name and an email where pages and alerts would
otherwise show `cust_...`, and the customer's account manager (contract section 4).

The copy is VINR's answer as it last came (`refreshed_at` says when); reconciliation refreshes
it (reconcile/customers.py). Nothing here is money: a customer not yet copied is shown by its id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias, Unpack

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.posting import manager_of
from ledger.tables import customers, positions
from vinr.events import MAX_ID

NOT_FINAL = ("draft", "open", "uncollectible")
# A query of any columns (SQLAlchemy types a Select by the types of its columns).
AnySelect: TypeAlias = Select[Unpack[tuple[Any, ...]]]

# VINR's names are people's and companies' names; a longer one is cut where it is kept, so one
# odd answer cannot bloat every page that lists it.
MAX_TEXT = 500


@dataclass(frozen=True)
class CustomerName:
    """How a customer is shown: `label` is its name, else its email, else its id."""

    id: str
    name: str | None = None
    email: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.email or self.id


def _text(value: Any) -> str | None:
    """A name or email as a text column keeps it: a string, without control characters (no
    PostgreSQL text holds a NUL), cut to MAX_TEXT; None for anything else or nothing left."""
    if not isinstance(value, str):
        return None
    cleaned = "".join(c if c.isprintable() else " " for c in value).strip()[:MAX_TEXT]
    return cleaned or None


def _metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def customer_row(answer: Any, now: datetime) -> dict[str, Any] | None:
    """The row (by the table's column names) for VINR's customer object `answer`; None for an
    answer that is no customer."""
    if not isinstance(answer, dict):
        return None
    customer_id = answer.get("id")
    if not isinstance(customer_id, str) or not 0 < len(customer_id) <= MAX_ID or not customer_id.isprintable():
        return None
    metadata = _metadata(answer.get("metadata"))
    return {
        "id": customer_id,
        "name": _text(answer.get("name")),
        "email": _text(answer.get("email")),
        "account_manager": manager_of(metadata),
        "metadata": metadata,
        "refreshed_at": now,
    }


async def upsert_customers(conn: AsyncConnection, answers: Iterable[dict[str, Any]],
                           now: datetime | None = None) -> int:
    """Keep VINR's answers for these customers, replacing what the ledger had; returns how many."""
    now = now or datetime.now(UTC)
    by_id = {row["id"]: row for row in (customer_row(a, now) for a in answers) if row is not None}
    if not by_id:
        return 0
    rows = [by_id[i] for i in sorted(by_id)]  # one order for every writer: no deadlock between two
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(customers)
    await conn.execute(insert.on_conflict_do_update(
        index_elements=[customers.c.id],
        set_={name: insert.excluded[name] for name in ("name", "email", "account_manager", "metadata",
                                                        "refreshed_at")},
    ), rows)
    return len(rows)


async def names_for(conn: AsyncConnection, ids: Iterable[str | None]) -> dict[str, CustomerName]:
    """How to show each of these customers: every id given maps to a `CustomerName`, with the
    name and email the ledger holds for it, or none (then its label is its id)."""
    wanted = sorted({i for i in ids if i})
    found: dict[str, CustomerName] = {}
    for start in range(0, len(wanted), 500):  # bound the IN list
        chunk = wanted[start:start + 500]
        rows = await conn.execute(select(customers.c.id, customers.c.name, customers.c.email)
                                  .where(customers.c.id.in_(chunk)))
        found.update({row.id: CustomerName(row.id, row.name, row.email) for row in rows})
    return {i: found.get(i, CustomerName(i)) for i in wanted}


def with_customer_names(query: AnySelect, customer_id: ColumnElement[str]) -> AnySelect:
    """`query` with each row's customer name and email beside it (`customer_name`,
    `customer_email`: None for a customer not copied), `customer_id` being the column that
    holds its id. One outer join on the customers' key: a page of rows stays a page."""
    return query.outerjoin(customers, customers.c.id == customer_id).add_columns(
        customers.c.name.label("customer_name"), customers.c.email.label("customer_email"))


async def customers_named(conn: AsyncConnection, text: str, limit: int = 50) -> list[str]:
    """The ids of the customers whose name or email is `text`, ignoring case (at most `limit`)."""
    wanted = text.strip().lower()
    if not wanted:
        return []
    return list((await conn.scalars(
        select(customers.c.id).where(or_(func.lower(customers.c.name) == wanted, func.lower(customers.c.email) == wanted))
        .order_by(customers.c.id).limit(limit))).all())


async def account_manager_of(conn: AsyncConnection, customer_id: str | None) -> str | None:
    """The customer's `metadata.accountManager` as last read from VINR; None if none or not copied."""
    if not customer_id:
        return None
    return await conn.scalar(select(customers.c.account_manager).where(customers.c.id == customer_id))


async def cached_customer(conn: AsyncConnection, customer_id: str | None) -> dict[str, Any] | None:
    """The customer as VINR's API last answered (`id`, `name`, `email`, `metadata`), from the
    ledger's copy; None when the ledger holds none."""
    if not customer_id:
        return None
    row = (await conn.execute(select(customers).where(customers.c.id == customer_id))).first()
    if row is None:
        return None
    return {"id": row.id, "name": row.name, "email": row.email, "metadata": dict(row._mapping["metadata"] or {})}


async def customers_to_refresh(conn: AsyncConnection, ids: Iterable[str], limit: int) -> list[str]:
    """Up to `limit` of `ids`: first those the ledger never copied, then the longest unrefreshed."""
    wanted = sorted({i for i in ids if i})
    refreshed: dict[str, datetime] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        rows = await conn.execute(select(customers.c.id, customers.c.refreshed_at).where(customers.c.id.in_(chunk)))
        refreshed.update({row.id: row.refreshed_at for row in rows})
    never = [i for i in wanted if i not in refreshed]
    stalest = sorted((i for i in wanted if i in refreshed), key=lambda i: (refreshed[i], i))
    return (never + stalest)[:limit]


async def customers_swept(conn: AsyncConnection, created_since: int | None, limit: int) -> list[str]:
    """The customers of the invoices a reconciliation from `created_since` sweeps (those
    created since then, and those not final; every one when None), up to `limit` of them:
    those never copied first, then the longest unrefreshed. One query, whatever the history."""
    swept: ColumnElement[bool] = positions.c.customer.is_not(None)
    if created_since is not None:
        swept = and_(swept, or_(positions.c.created >= created_since, positions.c.status.in_(NOT_FINAL),
                                positions.c.created.is_(None)))
    seen = select(positions.c.customer.label("id")).where(swept).distinct().subquery()
    rows = await conn.execute(
        select(seen.c.id).select_from(seen.outerjoin(customers, customers.c.id == seen.c.id))
        .order_by(customers.c.refreshed_at.asc().nulls_first(), seen.c.id).limit(limit))
    return list(rows.scalars())

