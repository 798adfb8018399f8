"""Applying several received events in one transaction, as `book.apply_event` would one by one.

The result is the same as applying the events one after another in the given order, with the
same guarantees, in three statements per batch on PostgreSQL (five on SQLite, one more when an
event is stale) where the single path spends five to seven per event:

- every position the batch touches is locked first (in sorted order, so two batches never
  deadlock on each other), and created if new;
- each event id is claimed once: the unique constraint on received events decides;
- each entry's idempotency key names the position version it moves from, as in the single path;
- a position is written back only where its version is still the one read.

On PostgreSQL each statement takes its rows as arrays (`unnest`), so its text, and the prepared
statement the server keeps for it, is the same whatever the batch size. SQLite runs the same
statements row by row (executemany), which costs it no round trips.

An event whose effect cannot be computed (`CannotApply`, or any other exception of its own)
aborts the batch with `PoisonInBatch`, naming it, so the caller can set it apart and apply the
others again. Replays, which may revive a dead event, go through `book.apply_event`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import bindparam, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.book import (
    POSITION_COLUMNS,
    ConcurrentUpdate,
    EventResult,
    entries,
    position_from_row,
    position_values,
    positions,
    postings,
    received,
)
from ledger.posting import Entry, Position, post
from vinr.events import Event, Invoice


@dataclass(frozen=True)
class Received:
    """One event to apply, with its invoice snapshot already validated (None if not an invoice event)."""

    event: Event
    invoice: Invoice | None
    body: bytes
    headers: dict[str, str]
    received_at: datetime


class PoisonInBatch(Exception):
    """Computing the effect of the event at `index` raised `error`; nothing of the batch was
    written. `CannotApply` means it can never apply; anything else is that event's alone too."""

    def __init__(self, index: int, error: Exception):
        super().__init__(index, error)
        self.index, self.error = index, error


@dataclass(frozen=True)
class _NewEntry:
    key: str
    entry: Entry
    invoice_id: str
    event_id: str
    effective_at: datetime


async def apply_events(conn: AsyncConnection, batch: list[Received], *, source: str = "webhook") -> list[EventResult]:
    """Record and apply each event of `batch`, in order, inside the caller's transaction.

    Returns one result per event. Raises `PoisonInBatch` for an event whose effect cannot be
    computed and database errors (or `ConcurrentUpdate`) for the caller to retry; either way
    nothing stays.
    """
    now = datetime.now(UTC)
    pg = conn.dialect.name == "postgresql"
    held = await _lock_positions(conn, sorted({item.invoice.id for item in batch if item.invoice}), pg)
    claimed = await _claim(conn, batch, source, now, pg)

    current = dict(held)
    results, stale, new_entries = [], [], []
    for index, item in enumerate(batch):
        if index not in claimed:
            results.append(EventResult("duplicate"))
            continue
        if item.invoice is None:
            results.append(EventResult("ignored"))
            continue
        position = current[item.invoice.id]
        # Whatever computing one event's effect raises is that event's alone (CannotApply, or a
        # value no check foresaw): the caller sets it apart and applies its neighbours.
        try:
            outcome = post(position, item.invoice, event_at=item.event.created)
            effective = datetime.fromtimestamp(item.event.created, UTC) if item.event.created else now
        except Exception as exc:
            raise PoisonInBatch(index, exc) from exc
        if outcome.stale:
            stale.append(item.event.id)
            results.append(EventResult("stale", outcome, item.invoice))
            continue
        new_entries += [
            _NewEntry(f"{item.invoice.id}:v{position.version}:{n}:{entry.kind}", entry, item.invoice.id,
                      item.event.id, effective)
            for n, entry in enumerate(outcome.entries)
        ]
        current[item.invoice.id] = outcome.position
        results.append(EventResult("applied", outcome, item.invoice))

    if stale:
        await conn.execute(_MARK_STALE_PG if pg else _MARK_STALE, {"ids": stale})
    changes = [(held[i], p) for i, p in current.items() if p != held[i]]
    if changes:  # (an entry always comes with a change of its position)
        await _write(conn, new_entries, changes, source, now, pg)
    return results


# --- Locking the positions -----------------------------------------------------------------

# Inserting an existing row's key with DO UPDATE locks that row, as FOR UPDATE would. ORDER BY
# makes every batch lock in the same order, and COLLATE "C" makes it code-point order, the order
# of Python's sorted() in which reconciliation locks: by the database's own collation (en_US,
# ICU) the two would lock "inv_B" and "inv_a" in opposite orders and deadlock.
_LOCK_PG = text("""
    INSERT INTO invoice_positions (invoice_id, total, amount_paid, amount_due, recognized, written_off,
                                   credited, attempt_count, version)
    SELECT id, 0, 0, 0, 0, 0, 0, 0, 0 FROM unnest(CAST(:ids AS VARCHAR[])) AS id ORDER BY id COLLATE "C"
    ON CONFLICT (invoice_id) DO UPDATE SET invoice_id = excluded.invoice_id
    RETURNING *
""")


def _lock_sqlite():
    # The write lock (BEGIN IMMEDIATE) is already the whole database's.
    statement = sqlite.insert(positions)
    return statement.on_conflict_do_update(
        index_elements=[positions.c.invoice_id], set_={"invoice_id": statement.excluded.invoice_id}
    ).returning(*positions.c)


_LOCK_SQLITE = _lock_sqlite()


async def _lock_positions(conn: AsyncConnection, invoice_ids: list[str], pg: bool) -> dict[str, Position]:
    """Each invoice's position, created empty if new, locked until the transaction ends."""
    if not invoice_ids:
        return {}
    if pg:
        rows = await conn.execute(_LOCK_PG, {"ids": invoice_ids})
    else:
        rows = await conn.execute(_LOCK_SQLITE, [{"invoice_id": i} for i in invoice_ids])
    return {row.invoice_id: position_from_row(row) for row in rows}


# --- Claiming the events ---------------------------------------------------------------------

_CLAIM_PG = text("""
    INSERT INTO received_events (event_id, type, invoice_id, body, headers, created, received_at, outcome,
                                 source, applied_at)
    SELECT *, CAST(:source AS VARCHAR), CAST(:now AS TIMESTAMPTZ) FROM unnest(
        CAST(:event_id AS VARCHAR[]), CAST(:type AS VARCHAR[]), CAST(:invoice_id AS VARCHAR[]),
        CAST(:body AS BYTEA[]), CAST(:headers AS JSON[]), CAST(:created AS BIGINT[]),
        CAST(:received_at AS TIMESTAMPTZ[]), CAST(:outcome AS VARCHAR[])) AS v
    ORDER BY 1
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
""")
_CLAIM_SQLITE = sqlite.insert(received).on_conflict_do_nothing().returning(received.c.event_id)


async def _claim(conn: AsyncConnection, batch: list[Received], source: str, now: datetime, pg: bool) -> set[int]:
    """Record each event not yet received; returns the indexes of those this batch recorded."""
    first: dict[str, int] = {}
    for index, item in enumerate(batch):
        first.setdefault(item.event.id, index)  # a second copy within the batch is a duplicate
    items = [batch[i] for i in first.values()]
    columns = {
        "event_id": [i.event.id for i in items],
        "type": [i.event.type for i in items],
        "invoice_id": [i.invoice.id if i.invoice else None for i in items],
        "body": [i.body for i in items],
        "headers": [i.headers for i in items],
        "created": [i.event.created for i in items],
        "received_at": [i.received_at for i in items],
        "outcome": ["applied" if i.invoice else "ignored" for i in items],
    }
    if pg:
        # The JSON codec SQLAlchemy installs on asyncpg takes text.
        columns["headers"] = [json.dumps(h) for h in columns["headers"]]
        rows = await conn.execute(_CLAIM_PG, {**columns, "source": source, "now": now})
    else:
        rows = await conn.execute(_CLAIM_SQLITE, [
            {**{name: values[n] for name, values in columns.items()}, "source": source, "applied_at": now}
            for n in range(len(items))
        ])
    recorded = set(rows.scalars())
    return {index for event_id, index in first.items() if event_id in recorded}


_MARK_STALE_PG = text("UPDATE received_events SET outcome = 'stale' WHERE event_id = ANY(CAST(:ids AS VARCHAR[]))")
_MARK_STALE = update(received).where(received.c.event_id.in_(bindparam("ids", expanding=True))).values(outcome="stale")


# --- Writing entries, postings and positions -------------------------------------------------

# Each column a position write sets, with the SQL type its array is cast to (a VARCHAR without
# its length: a cast to VARCHAR(n) would cut a longer value where the column refuses it).
_POSITION_COLUMNS = {
    name: re.sub(r"\(\d+\)$", "", positions.c[name].type.compile(postgresql.dialect())) for name in POSITION_COLUMNS
}

# One statement: the entries, their postings (each finds its entry by idempotency key) and the
# positions, each written only where its version is still the one read. Its row count is the
# number of positions written.
_WRITE_PG = text(f"""
    WITH e AS (
        INSERT INTO journal_entries (idempotency_key, kind, invoice_id, currency, event_id, effective_at,
                                     source, recorded_at)
        SELECT *, CAST(:source AS VARCHAR), CAST(:now AS TIMESTAMPTZ) FROM unnest(
            CAST(:e_key AS VARCHAR[]), CAST(:e_kind AS VARCHAR[]), CAST(:e_invoice_id AS VARCHAR[]),
            CAST(:e_currency AS VARCHAR[]), CAST(:e_event_id AS VARCHAR[]),
            CAST(:e_effective_at AS TIMESTAMPTZ[])) AS v
        RETURNING id, idempotency_key
    ), posted AS (
        INSERT INTO postings (entry_id, account, direction, amount, currency)
        SELECT e.id, p.account, p.direction, p.amount, p.currency
        FROM unnest(CAST(:p_key AS VARCHAR[]), CAST(:p_account AS VARCHAR[]), CAST(:p_direction AS VARCHAR[]),
                    CAST(:p_amount AS BIGINT[]), CAST(:p_currency AS VARCHAR[]))
             AS p(key, account, direction, amount, currency)
        JOIN e ON e.idempotency_key = p.key
    )
    UPDATE invoice_positions AS p SET {", ".join(f"{c} = v.{c}" for c in _POSITION_COLUMNS)},
        updated_at = CAST(:now AS TIMESTAMPTZ)
    FROM unnest(CAST(:invoice_id AS VARCHAR[]), CAST(:old_version AS INTEGER[]),
                {", ".join(f"CAST(:{c} AS {t}[])" for c, t in _POSITION_COLUMNS.items())})
         AS v(invoice_id, old_version, {", ".join(_POSITION_COLUMNS)})
    WHERE p.invoice_id = v.invoice_id AND p.version = v.old_version
""")
_WRITE_POSITIONS_SQLITE = (
    update(positions)
    .where(positions.c.invoice_id == bindparam("p_invoice_id"), positions.c.version == bindparam("p_old_version"))
    .values(updated_at=bindparam("p_now"), **{c: bindparam(f"p_{c}") for c in _POSITION_COLUMNS})
)


async def _write(conn: AsyncConnection, new_entries: list[_NewEntry], changes: list[tuple[Position, Position]],
                 source: str, now: datetime, pg: bool) -> None:
    """Post the entries and write each changed position where its version is still the one read, or raise."""
    lines = [(new.key, line, new.entry.currency) for new in new_entries for line in new.entry.lines]
    rows = [{"invoice_id": old.invoice_id, "old_version": old.version, **position_values(new)} for old, new in changes]
    if pg:
        written = (await conn.execute(_WRITE_PG, {
            "source": source, "now": now,
            "e_key": [n.key for n in new_entries], "e_kind": [n.entry.kind for n in new_entries],
            "e_invoice_id": [n.invoice_id for n in new_entries],
            "e_currency": [n.entry.currency for n in new_entries],
            "e_event_id": [n.event_id for n in new_entries], "e_effective_at": [n.effective_at for n in new_entries],
            "p_key": [key for key, _, _ in lines], "p_account": [line.account for _, line, _ in lines],
            "p_direction": [line.direction for _, line, _ in lines],
            "p_amount": [line.amount for _, line, _ in lines], "p_currency": [c for _, _, c in lines],
            **{name: [row[name] for row in rows] for name in rows[0]},
        })).rowcount
    else:
        await _post_sqlite(conn, new_entries, lines, source, now)
        written = (await conn.execute(
            _WRITE_POSITIONS_SQLITE, [{"p_now": now, **{f"p_{k}": v for k, v in row.items()}} for row in rows]
        )).rowcount
    if written != len(changes):
        raise ConcurrentUpdate(f"{len(changes) - written} of {len(changes)} positions moved meanwhile")


async def _post_sqlite(conn: AsyncConnection, new_entries: list[_NewEntry], lines: list, source: str,
                       now: datetime) -> None:
    if not new_entries:
        return
    ids = (await conn.execute(entries.insert().returning(entries.c.id, sort_by_parameter_order=True), [
        {"idempotency_key": n.key, "kind": n.entry.kind, "invoice_id": n.invoice_id, "currency": n.entry.currency,
         "source": source, "event_id": n.event_id, "run_id": None, "effective_at": n.effective_at,
         "recorded_at": now}
        for n in new_entries
    ])).scalars().all()
    entry_ids = {n.key: entry_id for n, entry_id in zip(new_entries, ids, strict=True)}
    await conn.execute(postings.insert(), [
        {"entry_id": entry_ids[key], "account": line.account, "direction": line.direction, "amount": line.amount,
         "currency": currency}
        for key, line, currency in lines
    ])
