"""Dead letters: events the worker gave up on, kept with their error until they are replayed.

A dead letter is written in its own transaction, together with the received event's outcome
`dead`. A replay (vinr_recon.jobs.queue_replays) queues it again as an `apply_event` job with a
fresh job id; the replayed job marks the dead letter replayed in the same transaction that
applies the event, so `replayed_at` means "the replay reached an outcome", never merely "it was
queued". A replay that dies again marks the old letter replayed and leaves a new one in its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.book import record_dead
from ledger.tables import dead_letters, received


async def bury(
    conn: AsyncConnection,
    *,
    event_id: str,
    event_type: str,
    body: bytes,
    headers: dict[str, str],
    error: str,
    attempts: int,
    received_at: datetime,
    replaces: int | None = None,
) -> int | None:
    """Record the event as dead and keep it as a dead letter; returns the dead letter's id.

    Writes no letter, and returns None, when the event was applied meanwhile by another
    delivery. `replaces` is the dead letter a replay came from: it is marked replayed. The id,
    type and error are stored as `storable` makes them: what made an event poison (a NUL, an id
    too long) must not fail its letter as well, or the job would be retried for ever.
    """
    now = datetime.now(UTC)
    event_id = storable(event_id, _length(dead_letters.c.event_id))
    event_type = storable(event_type, _length(dead_letters.c.type))
    error = storable(error)
    await record_dead(conn, event_id, event_type, body, headers, error, received_at)
    outcome = await conn.scalar(select(received.c.outcome).where(received.c.event_id == event_id))
    if replaces is not None:
        await conn.execute(
            update(dead_letters)
            .where(dead_letters.c.id == replaces, dead_letters.c.replayed_at.is_(None))
            .values(replayed_at=now)
        )
    if outcome != "dead":
        return None
    # The received event shows the latest error, the letters keep each one.
    await conn.execute(update(received).where(received.c.event_id == event_id).values(error=error))
    letter_id: int = (await conn.execute(
        insert(dead_letters)
        .values(event_id=event_id, type=event_type, body=body, headers=headers, error=error,
                attempts=attempts, dead_at=now)
        .returning(dead_letters.c.id)
    )).scalar_one()
    return letter_id


def _length(column: Column[Any]) -> int | None:
    """The most characters a text column holds (None: no limit). Its type is SQLModel's
    AutoString, a TypeDecorator that answers `length` for the String it wraps."""
    length: int | None = getattr(column.type, "length", None)
    return length


def storable(text: str, limit: int | None = None) -> str:
    """`text` as every database's text column keeps it: each control or other unprintable
    character escaped as Python writes it (`\\x00`, `\\ud800`: PostgreSQL takes no NUL, no
    driver a lone surrogate), cut to `limit` characters. Printable text is left as it is."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escaped(c) for c in text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


@dataclass(frozen=True)
class Letter:
    id: int
    event_id: str
    type: str
    body: bytes
    headers: dict[str, str]
    received_at: datetime
    error: str


async def waiting_count(conn: AsyncConnection) -> int:
    """Dead letters not yet replayed (for a gauge, or a person)."""
    return (await conn.execute(
        select(func.count()).select_from(dead_letters).where(dead_letters.c.replayed_at.is_(None)))).scalar_one()


async def pending(conn: AsyncConnection, event_ids: list[str] | None = None) -> list[Letter]:
    """Dead letters not yet replayed, oldest first; only those of `event_ids` when given."""
    query = (
        select(dead_letters, received.c.received_at)
        .join(received, received.c.event_id == dead_letters.c.event_id, isouter=True)
        .where(dead_letters.c.replayed_at.is_(None))
        .order_by(dead_letters.c.id)
    )
    if event_ids:
        query = query.where(dead_letters.c.event_id.in_(event_ids))
    return [
        Letter(row.id, row.event_id, row.type, row.body, row.headers, row.received_at or row.dead_at, row.error)
        for row in await conn.execute(query)
    ]


async def mark_replayed(conn: AsyncConnection, dead_letter_id: int) -> None:
    """The replay of this letter reached an outcome (in the transaction that applied it)."""
    await conn.execute(
        update(dead_letters)
        .where(dead_letters.c.id == dead_letter_id, dead_letters.c.replayed_at.is_(None))
        .values(replayed_at=datetime.now(UTC))
    )
