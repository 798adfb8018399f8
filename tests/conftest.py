"""Fixtures shared by every test file: real Redis and PostgreSQL on this machine.

Tests never flush shared state: each gets its own arq queue name and its own ids, so several
test runs (or helpers) on one machine do not interfere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import sqlite3
import traceback
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


# --- The whole suite's logs hold no secret, signature or key ---------------------------------
# Every record logged in this process, and every line of the children's log files (`*.log`
# under the session's temporary folder: receivers, workers, sandboxes, Redis), is searched for
# anything shaped like a webhook secret, a v1 signature, a sandbox API key or the test token.

SECRET_SHAPES = re.compile(
    r"whsec_[A-Za-z0-9_]{8,}|v1=[0-9a-f]{64}|vinr_(?:test|live)_[A-Za-z0-9]{32,}|" + re.escape(API_TOKEN))
# The one line that shows a key on purpose: `vinr-recon sandbox` prints its test key once, on
# standard output, for the person who started it (issue 3), which the harnesses keep with its log.
PRINTED_ON_PURPOSE = "test key (X-Api-Key): "


def _leak(where: str, text: str) -> str | None:
    hit = SECRET_SHAPES.search(text)
    return f"{where}: {hit.group(0)[:10]}... in {text[:160]!r}" if hit else None


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(tmp_path_factory):
    leaks: list[str] = []
    make_record = logging.getLogRecordFactory()

    def searched(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is logging's problem, not this check's
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += "".join(traceback.format_exception(*record.exc_info))
        if leak := _leak(f"logger {record.name}", text):
            leaks.append(leak)
        return record

    logging.setLogRecordFactory(searched)
    yield
    logging.setLogRecordFactory(make_record)
    for path in sorted(tmp_path_factory.getbasetemp().rglob("*.log")):
        with path.open(errors="replace") as lines:
            for line in lines:
                if not line.startswith(PRINTED_ON_PURPOSE) and (leak := _leak(str(path), line)):
                    leaks.append(leak)
    assert not leaks, f"{len(leaks)} log lines hold a secret, a signature or a key:\n" + "\n".join(leaks[:10])


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


def copy_of(sqlite_template: Path, path: Path) -> str:
    """A migrated SQLite ledger at `path`, copied from the session's template; its URL."""
    source, target = sqlite3.connect(sqlite_template), sqlite3.connect(path)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return f"sqlite:///{path}"


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
        return copy_of(sqlite_template, tmp_path / "ledger.db")
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
