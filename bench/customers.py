"""Refreshing the ledger's copy of VINR's customers (reconcile/customers.py) over real HTTP.

    .venv/bin/python bench/customers.py [--customers 2000] [--rate 0 --rate 100]

The sandbox (its rate limit off) serves `--customers` customers on loopback; a fresh SQLite
ledger in a temporary folder receives them. For each `--rate` (requests per second of the
client; 0: unpaced) the table shows the time of one refresh of every customer, the requests
made and the customers per second. At the live 100 requests/s a run's bound of 2,000 customers
takes about 20 s; unpaced, the figure is what the sandbox and the writes cost here.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger.db import create_engine  # noqa: E402
from ledger.migrate import upgrade_async  # noqa: E402
from reconcile.customers import refresh_customers  # noqa: E402
from vinr.client import VinrClient  # noqa: E402
from vinr.sandbox.app import create_app  # noqa: E402
from vinr.sandbox.config import SandboxConfig  # noqa: E402
from vinr.sandbox.serving import serve  # noqa: E402


async def main(customers: int, rates: list[float]) -> None:
    app = create_app(SandboxConfig(rate_limit=0))
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/ledger.db"
        await upgrade_async(url)
        engine = create_engine(url)
        async with serve(app) as root:
            sandbox = app.state.sandbox
            ids = [sandbox.state.create_customer(email=f"c{n}@x.example", name=f"Customer {n}", metadata={}).id
                   for n in range(customers)]
            print(f"{'rate (req/s)':>12} {'customers':>10} {'requests':>9} {'seconds':>8} {'per second':>11}")
            for rate in rates:
                async with VinrClient(root + "/v1", sandbox.api_key, rate=rate) as client:
                    started = time.perf_counter()
                    done = await refresh_customers(client, engine, ids, limit=customers)
                    took = time.perf_counter() - started
                print(f"{rate or 'unpaced':>12} {done.refreshed:>10} {client.requests_made:>9} {took:>8.2f} "
                      f"{done.refreshed / took:>11.0f}")
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--rate", type=float, action="append")
    args = parser.parse_args()
    asyncio.run(main(args.customers, args.rate or [0.0, 100.0]))
