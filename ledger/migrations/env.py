"""Alembic's environment: runs migrations over the async engine of `DATABASE_URL`."""

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db import create_engine
from ledger.tables import metadata

config = context.config


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copy
    )
    with context.begin_transaction():
        context.run_migrations()


async def _migrate() -> None:
    engine: AsyncEngine = create_engine(config.get_main_option("sqlalchemy.url"))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_migrate())
