"""Schema migrations (Alembic), run by `vinr-recon db upgrade` and by tests."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

# Alembic announces at INFO each plugin it sets up as it is imported, and its dialect on every
# run; only what it applies ("Running upgrade ...") is worth a line.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
logging.getLogger("alembic.runtime.migration").addFilter(
    lambda record: not str(record.msg).startswith(("Context impl", "Will assume")))

from alembic import command  # noqa: E402  (after the line above)
from alembic.config import Config  # noqa: E402

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the ledger's schema to `revision`; safe to run again (it does nothing then)."""
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    # env.py runs its own event loop, so from async code it runs in a thread.
    await asyncio.to_thread(upgrade, database_url, revision)
