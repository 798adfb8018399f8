"""Fixtures shared by every test file: real Redis and PostgreSQL on this machine.

Tests never flush shared state: each gets its own arq queue name and its own ids, so several
test runs (or helpers) on one machine do not interfere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import uuid
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr
from sqlalchemy import text

from ledger.db import create_engine as create_ledger_engine
from ledger.migrate import upgrade
from ledger.tables import metadata as ledger_metadata
from vinr_recon.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
WEBHOOK_SECRET = "whsec_test_" + "k" * 24
API_TOKEN = "ledger-token-" + "t" * 20


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Settings built explicitly (never from the developer's environment or `.env`)."""
    return Settings(
        _env_file=None,
        vinr_webhook_secret=SecretStr(WEBHOOK_SECRET),
        ledger_api_token=SecretStr(API_TOKEN),
        redis_url=REDIS_URL,
        queue_name=unique("arq:queue:test"),
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
    )


# --- The ledger's databases: a migrated SQLite file per test, a private PostgreSQL database
# per session (migrated once, its ledger tables emptied before each test, dropped at the end).


def _in_thread(fn, *args):
    """Run `fn` (which may call asyncio.run, as Alembic's env does) off pytest's event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


async def _pg_admin(sql: str) -> None:
    connection = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def pg_database():
    """The URL of a private, migrated PostgreSQL database for this test session."""
    name = unique("vinr_test")
    _in_thread(asyncio.run, _pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
        _in_thread(upgrade, url)
        yield url
    finally:
        _in_thread(asyncio.run, _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ledger") / "template.db"
    _in_thread(upgrade, f"sqlite:///{path}")
    return path


async def clear_ledger(engine) -> None:
    """Empty every ledger table but the chart of accounts."""
    tables = [table for table in reversed(ledger_metadata.sorted_tables) if table.name != "accounts"]
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text(f"TRUNCATE {', '.join(t.name for t in tables)} RESTART IDENTITY"))
        else:
            for table in tables:
                await conn.execute(table.delete())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def ledger_url(request, tmp_path, sqlite_template):
    """A migrated, empty ledger: a fresh SQLite file, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        source, target = sqlite3.connect(sqlite_template), sqlite3.connect(path)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_database")
    engine = create_ledger_engine(url)
    try:
        await clear_ledger(engine)
    finally:
        await engine.dispose()
    return url


@pytest.fixture
async def ledger_engine(ledger_url):
    engine = create_ledger_engine(ledger_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def ledger_settings(settings, ledger_url) -> Settings:
    """`settings` with the ledger of `ledger_url`."""
    return settings.model_copy(update={"database_url": ledger_url})
