"""Writing to the ledger: one function applies a snapshot, one applies a received event.

Each runs inside the caller's transaction (`engine.begin()`), so an event's record and its
effect commit together or not at all. Two guards make double posting impossible even when
two workers race: the position row is locked (`FOR UPDATE` on PostgreSQL, `BEGIN IMMEDIATE`
on SQLite), and every entry's idempotency key names the position version it moves from, so
a second writer from the same version violates a unique constraint instead of posting twice.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.posting import Facts, Outcome, Position, post
from ledger.tables import InvoicePosition, JournalEntry, Posting, ReceivedEvent
from vinr.events import Event, Invoice

positions = InvoicePosition.__table__
entries = JournalEntry.__table__
postings = Posting.__table__
received = ReceivedEvent.__table__


class ConcurrentUpdate(Exception):
    """Another writer moved the position first; retrying the transaction is safe."""


def _insert(conn: AsyncConnection, table):
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


# A position's own fields, each stored in the column of its name; its facts are stored beside
# them as recognized, written_off and credited (collected is amount_paid, applied is
# applied_balance). Both writers (here and ledger/batch.py) read and write through these two
# functions, so a new field of `Position` and its column are all a new column needs.
_PLAIN = tuple(f.name for f in fields(Position) if f.name != "facts")


def position_from_row(row) -> Position:
    values = row._mapping
    return Position(
        **{name: values[name] for name in _PLAIN},
        facts=Facts(values["recognized"], values["amount_paid"], values["written_off"], values["credited"],
                    values["applied_balance"]),
    )


def position_values(position: Position) -> dict[str, Any]:
    """The columns a write of `position` sets (its key `invoice_id` apart)."""
    return {
        **{name: getattr(position, name) for name in _PLAIN if name != "invoice_id"},
        "recognized": position.facts.recognized,
        "written_off": position.facts.written_off,
        "credited": position.facts.credited,
    }


POSITION_COLUMNS = tuple(position_values(Position(invoice_id="")))


_SELECT_FOR_UPDATE = select(positions).where(positions.c.invoice_id == bindparam("invoice_id")).with_for_update()


async def lock_position(conn: AsyncConnection, invoice_id: str) -> Position:
    """The invoice's position, created empty if new, locked until the transaction ends."""
    # Most positions exist: lock and read in one statement, and insert only when there is none.
    row = (await conn.execute(_SELECT_FOR_UPDATE, {"invoice_id": invoice_id})).first()
    if row is None:
        insert = _insert(conn, positions).values(invoice_id=invoice_id).on_conflict_do_nothing()
        row = (await conn.execute(insert.returning(*positions.c))).first()
    if row is None:  # another transaction created it meanwhile: wait for its lock
        row = (await conn.execute(_SELECT_FOR_UPDATE, {"invoice_id": invoice_id})).one()
    return position_from_row(row)


async def apply_snapshot(
    conn: AsyncConnection,
    invoice: Invoice,
    *,
    source: str,
    event_id: str | None = None,
    run_id: int | None = None,
    authoritative: bool = False,
    event_at: int | None = None,
    now: datetime | None = None,
    position: Position | None = None,
) -> Outcome:
    """Move the ledger's position of `invoice` to this snapshot, posting what the rule says.

    Pass `position` when this transaction already holds it from `lock_position`.
    """
    now = now or datetime.now(UTC)
    position = position or await lock_position(conn, invoice.id)
    outcome = post(position, invoice, authoritative=authoritative, event_at=event_at)
    if outcome.stale or outcome.position == position:
        return outcome

    new = outcome.position
    if outcome.entries:
        effective = datetime.fromtimestamp(event_at, UTC) if event_at else now
        ids = (
            await conn.execute(
                entries.insert().returning(entries.c.id, sort_by_parameter_order=True),
                [
                    {
                        "idempotency_key": f"{invoice.id}:v{position.version}:{i}:{entry.kind}",
                        "kind": entry.kind,
                        "invoice_id": invoice.id,
                        "currency": entry.currency,
                        "source": source,
                        "event_id": event_id,
                        "run_id": run_id,
                        "effective_at": effective,
                        "recorded_at": now,
                    }
                    for i, entry in enumerate(outcome.entries)
                ],
            )
        ).scalars().all()
        await conn.execute(
            postings.insert(),
            [
                {"entry_id": entry_id, "account": line.account, "direction": line.direction,
                 "amount": line.amount, "currency": entry.currency}
                for entry_id, entry in zip(ids, outcome.entries, strict=True)
                for line in entry.lines
            ],
        )
    updated = await conn.execute(
        update(positions)
        .where(positions.c.invoice_id == invoice.id, positions.c.version == position.version)
        .values(**position_values(new), updated_at=now)
    )
    if updated.rowcount != 1:
        raise ConcurrentUpdate(invoice.id)
    return outcome


@dataclass(frozen=True)
class EventResult:
    """What applying one received event did."""

    outcome: str  # applied | stale | ignored | duplicate
    snapshot: Outcome | None = None
    invoice: Invoice | None = None
    notices: tuple[int, ...] = ()  # outbox ids staged with it (ledger.outbox), to deliver after commit


async def apply_event(
    conn: AsyncConnection,
    event: Event,
    body: bytes,
    headers: dict[str, str],
    *,
    source: str = "webhook",
    received_at: datetime | None = None,
    replay: bool = False,
) -> EventResult:
    """Record a received event and apply it, exactly once per event id.

    Raises `InvalidEvent` or `CannotApply` for an event that can never be applied (the caller
    dead-letters it) and database errors for the caller to retry; either way nothing of this
    transaction stays. `replay` lets an event recorded as dead be applied after all.
    """
    now = datetime.now(UTC)
    invoice = event.invoice() if event.is_invoice_event else None
    # Lock first: concurrent deliveries of one event then queue on the position row.
    position = await lock_position(conn, invoice.id) if invoice else None
    claimed = await conn.execute(
        _insert(conn, received)
        .values(
            event_id=event.id,
            type=event.type,
            invoice_id=invoice.id if invoice else None,
            source=source,
            body=body,
            headers=headers,
            created=event.created,
            received_at=received_at or now,
            applied_at=now,
            outcome="applied" if invoice else "ignored",
        )
        .on_conflict_do_nothing()
        .returning(received.c.id)
    )
    if claimed.first() is None and not (replay and await _revive(conn, event.id, now)):
        return EventResult("duplicate")
    if invoice is None:
        return EventResult("ignored")
    snapshot = await apply_snapshot(
        conn, invoice, source=source, event_id=event.id, event_at=event.created, now=now, position=position
    )
    if snapshot.stale:
        await conn.execute(update(received).where(received.c.event_id == event.id).values(outcome="stale"))
    return EventResult("stale" if snapshot.stale else "applied", snapshot, invoice)


async def _revive(conn: AsyncConnection, event_id: str, now: datetime) -> bool:
    revived = await conn.execute(
        update(received)
        .where(received.c.event_id == event_id, received.c.outcome == "dead")
        .values(outcome="applied", applied_at=now, error=None)
    )
    return revived.rowcount == 1


async def record_dead(conn: AsyncConnection, event_id: str, event_type: str, body: bytes,
                      headers: dict[str, str], error: str, received_at: datetime | None = None,
                      source: str = "webhook") -> None:
    """Mark a received event dead (it stays visible, and replay can still apply it)."""
    now = datetime.now(UTC)
    await conn.execute(
        _insert(conn, received)
        .values(event_id=event_id, type=event_type, body=body, headers=headers, source=source,
                received_at=received_at or now, outcome="dead", error=error)
        .on_conflict_do_nothing()
    )


async def trial_balance(conn: AsyncConnection) -> dict[tuple[str, str], tuple[int, int]]:
    """(account, currency) -> (debits, credits), summed over every posting."""
    debit = func.coalesce(func.sum(postings.c.amount).filter(postings.c.direction == "debit"), 0)
    credit = func.coalesce(func.sum(postings.c.amount).filter(postings.c.direction == "credit"), 0)
    rows = await conn.execute(
        select(postings.c.account, postings.c.currency, debit, credit)
        .group_by(postings.c.account, postings.c.currency)
        .order_by(postings.c.account, postings.c.currency)
    )
    return {(a, c): (int(d), int(k)) for a, c, d, k in rows}
