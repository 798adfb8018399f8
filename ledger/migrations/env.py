"""Alembic's environment: runs migrations over the async engine of `DATABASE_URL`."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db import create_engine
from ledger.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copy
    )
    with context.begin_transaction():
        context.run_migrations()


async def _migrate() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if url is None:  # ledger.migrate.alembic_config always sets it
        raise RuntimeError("no sqlalchemy.url: run the migrations through ledger.migrate")
    engine: AsyncEngine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_migrate())
