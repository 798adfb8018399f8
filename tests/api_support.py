"""Helpers for the API's tests (no tests here): a ledger seeded with invoices in every state and
a few reconciliation runs, and the receiver app under a real uvicorn in a thread of its own.

`receiver_support.served` runs uvicorn on the test's own event loop, which suits async tests;
schemathesis (requests) and hypothesis-driven tests call synchronously, and would block that
loop. Here the server gets its own thread and event loop, and the test a plain base URL.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import uvicorn
from sqlalchemy import insert
from starlette.applications import Starlette

from ledger.book import apply_event, apply_snapshot
from ledger.tables import Finding, ReconciliationRun
from lifecycles import body, snapshot
from vinr.events import Invoice, parse_event

# --- the ledger the API reads -------------------------------------------------------------

# Invoices in every state the API can show: open and partly paid, paid, void, written off,
# a credit note, another currency; one stale (out of order) event.
INVOICES = ["inv_open", "inv_paid", "inv_void", "inv_bad_debt", "inv_credit", "inv_usd", "inv_corrected"]


async def _deliver(conn, event_id: str, event_type: str, invoice: dict, created: int) -> None:
    raw = body(event_id, event_type, invoice, created)
    await apply_event(conn, parse_event(raw), raw, {"x-vinr-signature": "t=1,v1=elided"})


async def seed(engine) -> list[int]:
    """Write the ledger through the functions the worker and reconciliation use; the run ids."""
    t = 1_763_800_000
    async with engine.begin() as conn:
        await _deliver(conn, "evt_o1", "invoice.finalized", snapshot("inv_open", "open", 196000), t)
        await _deliver(conn, "evt_o2", "invoice.updated", snapshot("inv_open", "open", 196000, 50000), t + 60)
        await _deliver(conn, "evt_o0", "invoice.created", snapshot("inv_open", "draft", 196000), t - 60)  # stale
        await _deliver(conn, "evt_p1", "invoice.finalized", snapshot("inv_paid", "open", 1200), t)
        await _deliver(conn, "evt_p2", "invoice.paid", snapshot("inv_paid", "paid", 1200, 1200, paidAt=t + 5), t + 5)
        await _deliver(conn, "evt_v1", "invoice.finalized", snapshot("inv_void", "open", 3000), t)
        await _deliver(conn, "evt_v2", "invoice.voided", snapshot("inv_void", "void", 3000), t + 9)
        await _deliver(conn, "evt_b1", "invoice.finalized", snapshot("inv_bad_debt", "open", 8000), t)
        await _deliver(conn, "evt_b2", "invoice.marked_uncollectible",
                       snapshot("inv_bad_debt", "uncollectible", 8000, 1000), t + 9)
        await _deliver(conn, "evt_c1", "invoice.finalized", snapshot("inv_credit", "paid", -2500), t)
        await _deliver(conn, "evt_u1", "invoice.finalized", snapshot("inv_usd", "open", 990, currency="USD"), t)
        await _deliver(conn, "evt_x1", "invoice.finalized", snapshot("inv_corrected", "open", 5000), t)
        await _deliver(conn, "evt_other", "customer.created", {"id": "cust_1", "object": "customer"}, t)

    runs = ReconciliationRun.__table__
    started = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
    async with engine.begin() as conn:
        completed = (await conn.execute(insert(runs).values(
            started_at=started, finished_at=started.replace(minute=1), status="completed", window_start=t - 86400,
            invoices_checked=7, corrections_posted=1, api_requests=3, counts={"status_mismatch": 1},
        ).returning(runs.c.id))).scalar_one()
        await apply_snapshot(conn, Invoice.model_validate(snapshot("inv_corrected", "paid", 5000, 5000)),
                             source="reconciliation", run_id=completed)
        await conn.execute(insert(Finding.__table__).values(
            run_id=completed, invoice_id="inv_corrected", category="status_mismatch", field="status",
            ledger_value="open", vinr_value="paid", corrected=True, entry_ids=[1],
        ))
        await conn.execute(insert(Finding.__table__).values(
            run_id=completed, invoice_id="inv_gone", category="missing_at_vinr", corrected=False, entry_ids=[],
        ))
        failed = (await conn.execute(insert(runs).values(
            started_at=started.replace(day=23), finished_at=started.replace(day=23, minute=2), status="failed",
            dry_run=True, message="VINR answered 503 three times",
        ).returning(runs.c.id))).scalar_one()
        running = (await conn.execute(insert(runs).values(
            started_at=started.replace(day=24), status="running", counts={},
        ).returning(runs.c.id))).scalar_one()
    return [completed, failed, running]


@contextmanager
def served_in_thread(app: Starlette) -> Iterator[str]:
    """`app` with its lifespan on a free loopback port; yields `http://127.0.0.1:<port>`."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, ws="none", lifespan="on")
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])  # signal handlers are only installed on the main thread
        except BaseException as exc:  # noqa: BLE001 (reported to the test below)
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if failure or not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"uvicorn did not start: {failure!r}")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"
