"""Engines for the ledger: SQLite (WAL) by default, PostgreSQL in production.

Nothing connects here at import time; a process's lifespan or worker start-up creates the
engine from its settings and disposes of it on shutdown.
"""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def async_url(url: str) -> str:
    """The public `DATABASE_URL` (`sqlite:///x.db`, `postgresql://...`) with its async driver."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database backend {backend!r}: use sqlite:/// or postgresql://")


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


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
        return create_async_engine(full, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=pre_ping,
                                   hide_parameters=True)

    engine = create_async_engine(full, connect_args={"timeout": 30}, hide_parameters=True)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" event below decide how a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine
