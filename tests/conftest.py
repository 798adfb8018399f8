"""Fixtures shared by every test file: real Redis and PostgreSQL on this machine.

Tests never flush shared state: each gets its own arq queue name and its own ids, so several
test runs (or helpers) on one machine do not interfere.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sqlite3
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
from arq.connections import ArqRedis, RedisSettings, create_pool
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import text

from ledger.db import create_engine as create_ledger_engine
from ledger.migrate import upgrade
from ledger.tables import metadata as ledger_metadata
from pg_support import in_thread as _in_thread, scratch_database
from vinr_recon.jobs import job_key, result_key
from vinr_recon.logging import configure_logging
from vinr_recon.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
WEBHOOK_SECRET = "whsec_test_" + "k" * 24
API_TOKEN = "ledger-token-" + "t" * 20


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def tag_of(queue_name: str) -> str:
    """The part `unique` added to a test's queue name: the test's own ids carry it too."""
    tag = queue_name.rsplit("_", 1)[-1]
    assert len(tag) == 16, f"{queue_name!r} was not made by unique(): its keys cannot be told apart"
    return tag


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


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of a private, migrated PostgreSQL database for this test session."""
    with scratch_database(PG_ADMIN_URL, unique("vinr_test")) as url:
        _in_thread(upgrade, url)
        yield url


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


def filled_ledger(settings: Settings, sqlite_template: Path, path: Path, fill) -> tuple[Settings, object]:
    """`settings` with a migrated SQLite ledger of its own at `path`, and what `fill(settings,
    engine)` returned once it filled it (run on an event loop of its own, off the test's)."""
    chosen = settings.model_copy(update={"database_url": copy_of(sqlite_template, path)})

    async def filled():
        engine = create_ledger_engine(chosen.database_url)
        try:
            return await fill(chosen, engine)
        finally:
            await engine.dispose()

    return chosen, _in_thread(asyncio.run, filled())


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


# --- Redis: the machine's, shared by every run, so a test cleans up what it wrote --------------


async def forget_queue(redis: Redis, queue_name: str) -> None:
    """Delete a test queue and its jobs and results: they have no expiry on the shared Redis."""
    ids = [member.decode() for member in await redis.zrange(queue_name, 0, -1)]
    keys = [key for job_id in ids for key in (job_key(job_id), result_key(job_id))]
    await redis.delete(queue_name, *keys)


async def forget_test_keys(redis: Redis, queue_name: str) -> None:
    """`forget_queue`, and every key bearing the queue's tag (the jobs, results, retries and
    in-progress marks of the ids made with `prefix`, the receiver's keys under the queue name)."""
    await forget_queue(redis, queue_name)
    keys = [key async for key in redis.scan_iter(match=f"*{tag_of(queue_name)}*", count=1000)]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
def prefix(settings) -> str:
    """Event ids unique to this test (job and result keys live in the shared Redis)."""
    return f"evt_{tag_of(settings.queue_name)}"


@pytest.fixture
async def redis(settings) -> AsyncIterator[ArqRedis]:
    """An arq pool on the real Redis, the test's own queue its default; afterwards, everything
    of the test's is deleted (`forget_test_keys`)."""
    queue_name = settings.queue_name
    pool = await create_pool(RedisSettings.from_dsn(settings.redis_url), default_queue_name=queue_name)
    yield pool
    await forget_test_keys(pool, queue_name)
    await pool.aclose()


@pytest.fixture
async def black_hole_redis() -> AsyncIterator[str]:
    """The URL of a Redis that never answers: a listener that reads everything and says nothing."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads everything, answers nothing
        writer.close()

    black_hole = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{black_hole.sockets[0].getsockname()[1]}/0"
    finally:
        black_hole.close()
        await black_hole.wait_closed()


# --- What the code logs, as in production ------------------------------------------------------


class LogCapture:
    """Everything logged, rendered as in production (JSON), kept in memory.

    `close()` puts the logging configuration back as it was, for the test files that follow.
    """

    def __init__(self) -> None:
        root = logging.getLogger()
        self._saved = (list(root.handlers), root.level, structlog.get_config())
        configure_logging("DEBUG", json=True)
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(root.handlers[0].formatter)
        root.addHandler(self.handler)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line.startswith("{")]

    def text(self) -> str:
        return self.stream.getvalue()

    def close(self) -> None:
        root = logging.getLogger()
        handlers, level, config = self._saved
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)


@pytest.fixture(scope="module")
def logs() -> Iterator[LogCapture]:
    """One capture for a whole test file (`pytestmark = pytest.mark.usefixtures("logs")` makes
    every test of it log there, so that its last test can inspect them all)."""
    capture = LogCapture()
    yield capture
    capture.close()


@pytest.fixture
def log_capture() -> Iterator[LogCapture]:
    """What this test alone logs (`logs` holds a whole file's); the configuration is put back after it."""
    capture = LogCapture()
    yield capture
    capture.close()
