"""The daily digest's read (ledger.digest.digests) at 100,000 invoices, SQLite and PostgreSQL.

    .venv/bin/python bench/digest.py [--invoices 100000] [--repeat 7] [--ledger sqlite|postgresql]

The ledger is bench/dashboard.py's (its `fill`: 1,000 customers, half of them naming one of ten
account managers, a third of the invoices naming their own, 30 % open, 5 % written off, due 30
days after they were made), written the same way, with the outbox such a ledger has
(`with_outbox`): a paid callback per paid invoice, and an email and a chat alert per payment
failure, a few hundred of them on invoices paid since the last digest, which it lists as
resolved. The digest reads once a day, before the worker's transaction that stages it: this is
how long that read takes (its list to chase, what was resolved, each failure's code). Exit
status 0 whatever the figures (a bench, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dashboard import fill, postgres_ledger, sqlite_ledger  # noqa: E402

from ledger.db import create_engine  # noqa: E402
from ledger.digest import digests  # noqa: E402

DEFAULT_RECIPIENT = "finance@merchant.example"
RESOLVED = 300  # paid invoices whose failure alerted, paid since the last digest


def with_outbox(rows: dict[str, list[tuple]], now: datetime, seed: int = 11) -> int:
    """Add to `rows` the outbox a ledger of these invoices has, the last digest a day ago, and
    RESOLVED matters closed since; the number of outbox rows."""
    rng = random.Random(seed)
    outbox = rows["outbox"] = []
    positions = {p[0]: p for p in rows["invoice_positions"]}
    paid = [i for i, p in positions.items() if p[3] == "paid"]
    closed = set(rng.sample(paid, RESOLVED))
    last_digest = now - timedelta(days=1)
    for invoice_id in paid:
        at = now - timedelta(hours=rng.uniform(1, 20)) if invoice_id in closed else last_digest - timedelta(
            days=rng.uniform(0, 400))
        outbox.append((f"paid:{invoice_id}:fulfilment", "fulfilment", "paid", invoice_id, "{}", "sent", 1, at))
    failures = [(e[0], e[2], e[7]) for e in rows["received_events"] if e[1] == "invoice.payment_failed"]
    failures += [(f"evt_closed_{n:04d}", invoice_id, now - timedelta(days=2)) for n, invoice_id in enumerate(closed)]
    for event_id, invoice_id, at in failures:
        payload = json.dumps({"failure": {"code": "card_declined"}})
        outbox += [(f"payment_failed:{event_id}:{channel}", channel, "payment_failed", invoice_id, payload, "sent", 1, at)
                   for channel in ("email", "chat")]
    outbox.append((f"digest:{DEFAULT_RECIPIENT}:{last_digest.date()}:email", "email", "digest", None, "{}", "sent", 1,
                   last_digest))
    return len(outbox)


async def measure(database_url: str, repeat: int) -> None:
    engine = create_engine(database_url)
    now = datetime.now(UTC)
    times = []
    try:
        for _ in range(repeat + 1):  # the first warms the caches
            started = time.perf_counter()
            async with engine.connect() as conn:
                lists = await digests(conn, now.date(), now, DEFAULT_RECIPIENT)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        await engine.dispose()
    on_lists = sum(w.count for w in lists)
    listed = sum(len(w.invoices) for w in lists)
    resolved = sum(len(w.resolved) for w in lists)
    print(f"  {len(lists)} managers, {on_lists:,} invoices to chase, {listed:,} listed, {resolved} resolved: "
          f"median {statistics.median(times[1:]):.0f} ms, worst {max(times[1:]):.0f} ms over {repeat} runs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--ledger", choices=["sqlite", "postgresql"], action="append")
    args = parser.parse_args()
    rows, ids = fill(args.invoices)
    notices = with_outbox(rows, datetime.now(UTC))
    print(f"ledger: {ids['rows']['invoices']:,} invoices, {notices:,} outbox rows")
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
