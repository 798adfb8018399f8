"""Engines for the ledger: SQLite (WAL) by default, PostgreSQL in production.

Nothing connects here at import time; a process's lifespan or worker start-up creates the
engine from its settings and disposes of it on shutdown.

Behind PgBouncer in transaction pooling mode, `DATABASE_URL` says so with the query parameter
`pgbouncer=transaction` (`postgresql://app@pgbouncer:6432/ledger?pgbouncer=transaction`). Each
transaction may then run on another server connection, so a prepared statement must not outlive
the statement it was made for: both statement caches are off (SQLAlchemy's
`prepared_statement_cache_size=0`, asyncpg's `statement_cache_size=0`) and every statement is
prepared unnamed. SQLAlchemy's docs name statements with a fresh uuid instead; those are never
deallocated (the `Close` reaches whichever server the next transaction gets), so they pile up in
the server connections unless PgBouncer runs `DEALLOCATE ALL` after every transaction. An
unnamed statement is replaced by the next one, and SQLAlchemy's asyncpg dialect runs every
statement inside an explicit transaction, so its parse and its execution stay on one server.
Session state (advisory locks, `SET`, `LISTEN`, temporary tables) does not survive a
transaction there either; the ledger uses none.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

POOLER_PARAMETER = "pgbouncer"
POOL_MODES = ("transaction", "session")  # statement pooling refuses transactions: not supported


def pool_mode(url: str) -> str | None:
    """The PgBouncer pooling mode `DATABASE_URL` names (`?pgbouncer=transaction`), else None."""
    mode = make_url(url).query.get(POOLER_PARAMETER)
    if mode is None:
        return None
    if mode not in POOL_MODES:
        raise ValueError(f"{POOLER_PARAMETER}={mode!r} in DATABASE_URL: use one of {', '.join(POOL_MODES)}")
    return mode


def _unnamed_statement() -> str:
    return ""  # asyncpg prepares an unnamed statement for an empty name


# What asyncpg needs behind a pooler that hands each transaction another server connection.
TRANSACTION_POOLING_ARGS: dict[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": _unnamed_statement,
}


def async_url(url: str) -> str:
    """The public `DATABASE_URL` (`sqlite:///x.db`, `postgresql://...`) with its async driver
    (and without the `pgbouncer` parameter, which is ours, not the driver's)."""
    parsed = make_url(url).difference_update_query([POOLER_PARAMETER])
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database backend {backend!r}: use sqlite:/// or postgresql://")


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def dialect_insert(conn: AsyncConnection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into `table` in the connection's dialect, which has ON CONFLICT on both."""
    return postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)


def create_engine(url: str, *, writer: bool = True, pool_size: int = 10, pre_ping: bool = True) -> AsyncEngine:
    """An async engine for `url`.

    `pre_ping` tests a PostgreSQL connection each time it is checked out (asyncpg spends three
    round trips on it); a caller that retries on a broken connection anyway can do without.

    On SQLite a `writer` engine opens every transaction with `BEGIN IMMEDIATE`: the write lock is
    taken before the first read, so a read-then-write is never based on a stale snapshot (Python's
    sqlite3 would otherwise begin only at the first write). WAL with `synchronous=NORMAL` never
    failed with "database is locked" where the default journal did, and is faster.
    """
    full = async_url(url)
    # A database error's text names its SQL, never its parameters: those are raw webhook bodies
    # and headers (the signature) that dead letters and log lines would otherwise carry.
    if make_url(full).get_backend_name() != "sqlite":
        connect_args = dict(TRANSACTION_POOLING_ARGS) if pool_mode(url) == "transaction" else {}
        return create_async_engine(full, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=pre_ping,
                                   hide_parameters=True, connect_args=connect_args)

    engine = create_async_engine(full, connect_args={"timeout": 30}, hide_parameters=True)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" event below decide how a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


# SQLSTATEs of a database that is away rather than refusing this transaction: class 08
# (connection exception; PgBouncer's own errors are 08P01), and the server shutting down,
# crashed, still starting up or out of connections.
_AWAY_SQLSTATES = ("57P01", "57P02", "57P03", "53300")


def is_connection_failure(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the database could not be reached or dropped the
    connection, as opposed to refusing what was asked: such a failure says nothing about the data
    and is worth retrying for as long as it lasts.

    A deadline passing alone does not count: it may be a lock another transaction holds (the
    caller's tries bound that), and is only counted when the driver says the connection broke.
    """
    from sqlalchemy.exc import DBAPIError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, OSError) and not isinstance(current, TimeoutError):
            return True  # refused, reset, unreachable, name lookup
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and (sqlstate.startswith("08") or sqlstate in _AWAY_SQLSTATES):
            return True
        current = current.__cause__ or current.__context__
    return False
