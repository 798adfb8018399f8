"""Refreshing the ledger's copy of VINR's customers (ledger/customers.py) after a reconciliation.

The run passes the customers of the invoices it saw (`refresh_swept_customers` finds them in
the ledger: those of the invoices created in its window, and of those not final); each is read with `GET /customers/{id}`
through the run's own client, so the client's pacing (VINR_API_RATE) holds for these requests
as for the rest of the run. A run refreshes at most `limit` customers, those never copied first,
then the longest unrefreshed, so a merchant with many customers is covered over a few nights
rather than one run growing without bound. A customer VINR cannot answer for keeps the copy it
had: names are no money, so a refresh never fails the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.customers import customers_swept, customers_to_refresh, upsert_customers
from vinr.client import NotFound, VinrClient, VinrError

log = structlog.get_logger("reconcile.customers")

REFRESH_LIMIT = 2_000      # customers per run: 20 s at the live 100 requests/s
AT_ONCE = 4                # requests in flight; the client's pacing sets the rate
WRITE_EVERY = 200          # answers kept per transaction


@dataclass(frozen=True)
class CustomersRefreshed:
    refreshed: int = 0
    missing: int = 0       # VINR answered 404: the copy, if any, is kept
    failed: int = 0        # not read (an outage, a refused key): tried again next run; 1 if the refresh itself failed
    left: int = 0          # over the limit: next run

    def as_dict(self) -> dict[str, int]:
        return {"refreshed": self.refreshed, "missing": self.missing, "failed": self.failed, "left": self.left}


async def refresh_customers(client: VinrClient, engine: AsyncEngine, ids: Iterable[str | None], *,
                            limit: int = REFRESH_LIMIT, at_once: int = AT_ONCE) -> CustomersRefreshed:
    """Read these customers from VINR and keep the answers in the ledger (see the module)."""
    wanted = sorted({i for i in ids if i})
    async with engine.connect() as conn:
        chosen = await customers_to_refresh(conn, wanted, limit)
    answers: list[dict[str, Any]] = []
    counts = {"refreshed": 0, "missing": 0, "failed": 0}
    queue = iter(chosen)

    async def read_some() -> None:
        for customer_id in queue:  # one shared iterator: each id is read once
            try:
                answers.append(await client.get_customer(customer_id))
            except NotFound:
                counts["missing"] += 1
            except VinrError as exc:
                counts["failed"] += 1
                log.warning("customer not refreshed", customer=customer_id, error=exc.code or str(exc))
            if len(answers) >= WRITE_EVERY:
                await _keep(engine, answers)

    await asyncio.gather(*(read_some() for _ in range(max(1, min(at_once, len(chosen))))))
    await _keep(engine, answers)
    counts["refreshed"] = len(chosen) - counts["missing"] - counts["failed"]
    result = CustomersRefreshed(**counts, left=len(wanted) - len(chosen))
    log.info("customers refreshed", **result.as_dict())
    return result


async def refresh_swept_customers(client: VinrClient, engine: AsyncEngine, window_start: int | None, *,
                                  limit: int = REFRESH_LIMIT) -> CustomersRefreshed:
    """Refresh the customers of the invoices a run from `window_start` swept (its window's, and
    the not final ones'), at most `limit`: what a completed, not dry, run calls at its end.

    Never raises but for cancellation: the run's outcome is recorded already, and a copy of
    names that could not be refreshed is only older, never wrong money."""
    try:
        async with engine.connect() as conn:
            ids = await customers_swept(conn, window_start, limit)
        return await refresh_customers(client, engine, ids, limit=limit)
    except Exception as exc:
        log.error("customers not refreshed", error=f"{type(exc).__name__}: {exc}")
        return CustomersRefreshed(failed=1)


async def _keep(engine: AsyncEngine, answers: list[dict[str, Any]]) -> None:
    """Write what was read so far (and empty the list), in one transaction."""
    if not answers:
        return
    taken = answers[:]
    answers.clear()
    async with engine.begin() as conn:
        await upsert_customers(conn, taken, datetime.now(UTC))
