"""The daily digest's query (ledger.digest.worklists) at 100,000 invoices, SQLite and PostgreSQL.

    .venv/bin/python bench/digest.py [--invoices 100000] [--repeat 7] [--ledger sqlite|postgresql]

The ledger is bench/dashboard.py's (its `fill`: 1,000 customers, half of them naming one of ten
account managers, a third of the invoices naming their own, 30 % open, 5 % written off, due 30
days after they were made), written the same way. The digest stages once a day, in one
transaction of the worker: this is how long that transaction reads. Exit status 0 whatever the
figures (a bench, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dashboard import fill, postgres_ledger, sqlite_ledger  # noqa: E402

from ledger.db import create_engine  # noqa: E402
from ledger.digest import worklists  # noqa: E402

DEFAULT_RECIPIENT = "finance@merchant.example"


async def measure(database_url: str, repeat: int) -> None:
    engine = create_engine(database_url)
    day = datetime.now(UTC).date()
    times = []
    try:
        for _ in range(repeat + 1):  # the first warms the caches
            started = time.perf_counter()
            async with engine.connect() as conn:
                lists = await worklists(conn, day, DEFAULT_RECIPIENT)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        await engine.dispose()
    on_lists = sum(w.count for w in lists)
    listed = sum(len(w.invoices) for w in lists)
    print(f"  {len(lists)} managers, {on_lists:,} invoices to chase, {listed:,} listed: "
          f"median {statistics.median(times[1:]):.0f} ms, worst {max(times[1:]):.0f} ms over {repeat} runs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--ledger", choices=["sqlite", "postgresql"], action="append")
    args = parser.parse_args()
    rows, ids = fill(args.invoices)
    print(f"ledger: {ids['rows']['invoices']:,} invoices")
    for ledger in args.ledger or ["sqlite", "postgresql"]:
        if ledger == "sqlite":
            with sqlite_ledger(rows, "bench-digest-") as path:
                print("SQLite:")
                asyncio.run(measure(f"sqlite:///{path}", args.repeat))
        else:
            with postgres_ledger(rows, "bench_digest_") as url:
                print("PostgreSQL:")
                asyncio.run(measure(url, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
