"""Writing to the ledger: every change goes through here, in the caller's transaction.

Two entry points, one write path. `apply_events` records and applies received events (a
webhook batch, a replay, a backfilled event: a single event is a batch of one);
`apply_snapshot` moves one position to VINR's snapshot (reconciliation's corrections). Both lock
the positions they touch, compute the entries with the pure rule (`ledger.posting.post`) and
write through `_write`, so an event's record and its effect commit together or not at all.

Two guards make double posting impossible even when two workers race: the position rows are
locked (in one sorted order, so two writers never deadlock), and every entry's idempotency key
names the position version it moves from, so a second writer from the same version violates a
unique constraint instead of posting twice; a position is written back only where its version
is still the one read.

On PostgreSQL a batch costs three statements (lock, claim, write; one more when an event is
stale), whatever its size: each takes its rows as arrays (`unnest`), so its text, and the
prepared statement the server keeps for it, is the same for every batch. SQLite runs the same
statements row by row (executemany), which costs it no round trips.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import ReturningInsert

from ledger.db import dialect_insert
from ledger.posting import Entry, Facts, Line, Outcome, Position, post
from ledger.tables import AnyRow, entries, positions, postings, received
from vinr.events import Event, Invoice


class ConcurrentUpdate(Exception):
    """Another writer moved the position first; retrying the transaction is safe."""


@dataclass(frozen=True)
class Received:
    """One event to apply, with its invoice snapshot already validated (None if not an invoice event)."""

    event: Event
    invoice: Invoice | None
    body: bytes
    headers: dict[str, str]
    received_at: datetime


@dataclass(frozen=True)
class EventResult:
    """What applying one received event did."""

    outcome: str  # applied | stale | ignored | duplicate
    snapshot: Outcome | None = None
    invoice: Invoice | None = None
    notices: tuple[int, ...] = ()  # outbox ids staged with it (ledger.outbox), to deliver after commit


class PoisonInBatch(Exception):
    """Computing the effect of the event at `index` raised `error`; nothing of the batch was
    written. `CannotApply` means it can never apply; anything else is that event's alone too."""

    def __init__(self, index: int, error: Exception):
        super().__init__(index, error)
        self.index, self.error = index, error


# --- A position and its row ------------------------------------------------------------------

# A position's own fields, each stored in the column of its name; its facts are stored beside
# them as recognized, written_off and credited (collected is amount_paid, applied is
# applied_balance). Every read and write goes through these two functions, so a new field of
# `Position` and its column are all a new column needs.
_PLAIN = tuple(f.name for f in fields(Position) if f.name != "facts")


def position_from_row(row: AnyRow) -> Position:
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


def entry_key(invoice_id: str, version: int, index: int, entry: Entry) -> str:
    """An entry's idempotency key: the position version it moves from makes a second writer fail."""
    return f"{invoice_id}:v{version}:{index}:{entry.kind}"


# --- Applying events -------------------------------------------------------------------------

async def apply_events(conn: AsyncConnection, batch: list[Received], *, source: str = "webhook",
                       replay: bool = False) -> list[EventResult]:
    """Record and apply each event of `batch`, in order, exactly once per event id.

    Returns one result per event. Raises `PoisonInBatch` for an event whose effect cannot be
    computed and database errors (or `ConcurrentUpdate`) for the caller to retry; either way
    nothing of the transaction stays. `replay` lets events recorded as dead be applied after all.
    """
    now = datetime.now(UTC)
    pg = conn.dialect.name == "postgresql"
    # Lock first: concurrent deliveries of one event then queue on the position row.
    held = await _lock_positions(conn, sorted({item.invoice.id for item in batch if item.invoice}), pg)
    claimed = await _claim(conn, batch, source, now, pg, replay)

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
            effective = _effective(item.event.created, now)
        except Exception as exc:
            raise PoisonInBatch(index, exc) from exc
        if outcome.stale:
            stale.append(item.event.id)
            results.append(EventResult("stale", outcome, item.invoice))
            continue
        new_entries += _new_entries(position, outcome, item.event.id, effective)
        current[item.invoice.id] = outcome.position
        results.append(EventResult("applied", outcome, item.invoice))

    if stale:
        await conn.execute(_MARK_STALE_PG if pg else _MARK_STALE, {"ids": stale})
    changes = [(held[i], p) for i, p in current.items() if p != held[i]]
    if changes:  # (an entry always comes with a change of its position)
        await _write(conn, new_entries, changes, source, now, pg)
    return results


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
    """`apply_events` for one event. Raises `InvalidEvent` or `CannotApply` for an event that can
    never be applied (the caller dead-letters it), database errors for the caller to retry."""
    invoice = event.invoice() if event.is_invoice_event else None
    item = Received(event, invoice, body, headers, received_at or datetime.now(UTC))
    try:
        (result,) = await apply_events(conn, [item], source=source, replay=replay)
    except PoisonInBatch as poison:
        raise poison.error from None
    return result


# --- Applying a snapshot (reconciliation) ----------------------------------------------------

async def lock_position(conn: AsyncConnection, invoice_id: str) -> Position:
    """The invoice's position, created empty if new, locked until the transaction ends."""
    held = await _lock_positions(conn, [invoice_id], conn.dialect.name == "postgresql")
    return held[invoice_id]


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
    new_entries = _new_entries(position, outcome, event_id, _effective(event_at, now), run_id)
    await _write(conn, new_entries, [(position, outcome.position)], source, now, conn.dialect.name == "postgresql")
    return outcome


# --- Dead events and the trial balance -------------------------------------------------------

async def record_dead(conn: AsyncConnection, event_id: str, event_type: str, body: bytes,
                      headers: dict[str, str], error: str, received_at: datetime | None = None,
                      source: str = "webhook") -> None:
    """Mark a received event dead (it stays visible, and replay can still apply it)."""
    now = datetime.now(UTC)
    await conn.execute(
        dialect_insert(conn, received)
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


# --- Locking the positions -----------------------------------------------------------------

# Inserting an existing row's key with DO UPDATE locks that row, as FOR UPDATE would, and creates
# the row of a new invoice in the same statement. ORDER BY makes every writer lock in the same
# order, and COLLATE "C" makes it code-point order, the order of Python's sorted(): by the
# database's own collation (en_US, ICU) two writers would lock "inv_B" and "inv_a" in opposite
# orders and deadlock.
_LOCK_PG = text("""
    INSERT INTO invoice_positions (invoice_id, total, amount_paid, amount_due, recognized, written_off,
                                   credited, attempt_count, version)
    SELECT id, 0, 0, 0, 0, 0, 0, 0, 0 FROM unnest(CAST(:ids AS VARCHAR[])) AS id ORDER BY id COLLATE "C"
    ON CONFLICT (invoice_id) DO UPDATE SET invoice_id = excluded.invoice_id
    RETURNING *
""")


def _lock_sqlite() -> ReturningInsert[Any]:
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
# A replay takes back events recorded as dead: they apply as if received now.
_REVIVE = (
    update(received)
    .where(received.c.event_id.in_(bindparam("ids", expanding=True)), received.c.outcome == "dead")
    .values(outcome="applied", applied_at=bindparam("now"), error=None)
    .returning(received.c.event_id)
)


async def _claim(conn: AsyncConnection, batch: list[Received], source: str, now: datetime, pg: bool,
                 replay: bool) -> set[int]:
    """Record each event not yet received; returns the indexes of those this batch recorded."""
    first: dict[str, int] = {}
    for index, item in enumerate(batch):
        first.setdefault(item.event.id, index)  # a second copy within the batch is a duplicate
    items = [batch[i] for i in first.values()]
    columns: dict[str, list[Any]] = {
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
    if replay and (dead := [event_id for event_id in first if event_id not in recorded]):
        recorded |= set((await conn.execute(_REVIVE, {"ids": dead, "now": now})).scalars())
    return {index for event_id, index in first.items() if event_id in recorded}


_MARK_STALE_PG = text("UPDATE received_events SET outcome = 'stale' WHERE event_id = ANY(CAST(:ids AS VARCHAR[]))")
_MARK_STALE = update(received).where(received.c.event_id.in_(bindparam("ids", expanding=True))).values(outcome="stale")


# --- Writing entries, postings and positions -------------------------------------------------

@dataclass(frozen=True)
class _NewEntry:
    key: str
    entry: Entry
    invoice_id: str
    event_id: str | None
    run_id: int | None
    effective_at: datetime


def _effective(event_at: int | None, now: datetime) -> datetime:
    return datetime.fromtimestamp(event_at, UTC) if event_at else now


def _new_entries(position: Position, outcome: Outcome, event_id: str | None, effective_at: datetime,
                 run_id: int | None = None) -> list[_NewEntry]:
    return [_NewEntry(entry_key(position.invoice_id, position.version, n, entry), entry, position.invoice_id,
                      event_id, run_id, effective_at)
            for n, entry in enumerate(outcome.entries)]


# Each column a position write sets, with the SQL type its array is cast to (a VARCHAR without
# its length: a cast to VARCHAR(n) would cut a longer value where the column refuses it).
_PG = postgresql.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy's dialect classes declare no __init__ types
_POSITION_COLUMNS = {name: re.sub(r"\(\d+\)$", "", positions.c[name].type.compile(_PG)) for name in POSITION_COLUMNS}

# One statement: the entries, their postings (each finds its entry by idempotency key) and the
# positions, each written only where its version is still the one read. Its row count is the
# number of positions written.
_WRITE_PG = text(f"""
    WITH e AS (
        INSERT INTO journal_entries (idempotency_key, kind, invoice_id, currency, event_id, run_id, effective_at,
                                     source, recorded_at)
        SELECT *, CAST(:source AS VARCHAR), CAST(:now AS TIMESTAMPTZ) FROM unnest(
            CAST(:e_key AS VARCHAR[]), CAST(:e_kind AS VARCHAR[]), CAST(:e_invoice_id AS VARCHAR[]),
            CAST(:e_currency AS VARCHAR[]), CAST(:e_event_id AS VARCHAR[]), CAST(:e_run_id AS INTEGER[]),
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
            "e_event_id": [n.event_id for n in new_entries], "e_run_id": [n.run_id for n in new_entries],
            "e_effective_at": [n.effective_at for n in new_entries],
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


async def _post_sqlite(conn: AsyncConnection, new_entries: list[_NewEntry], lines: list[tuple[str, Line, str]],
                       source: str, now: datetime) -> None:
    if not new_entries:
        return
    ids = (await conn.execute(entries.insert().returning(entries.c.id, sort_by_parameter_order=True), [
        {"idempotency_key": n.key, "kind": n.entry.kind, "invoice_id": n.invoice_id, "currency": n.entry.currency,
         "source": source, "event_id": n.event_id, "run_id": n.run_id, "effective_at": n.effective_at,
         "recorded_at": now}
        for n in new_entries
    ])).scalars().all()
    entry_ids = {n.key: entry_id for n, entry_id in zip(new_entries, ids, strict=True)}
    await conn.execute(postings.insert(), [
        {"entry_id": entry_ids[key], "account": line.account, "direction": line.direction, "amount": line.amount,
         "currency": currency}
        for key, line, currency in lines
    ])
