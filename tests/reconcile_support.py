"""Helpers shared by the reconciliation tests that run the real parts (no tests here): VINR's
sandbox delivering to the real receiver app under uvicorn, the real Redis, the real worker
(`drain`: arq's worker with `vinr-recon worker`'s settings), and `Pausing`, a loopback stand-in
for the network between a run and VINR that can hold an answer back or rewrite it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import httpx
from redis.asyncio import Redis
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conftest import WEBHOOK_SECRET
from ledger.book import trial_balance
from ledger.tables import InvoicePosition
from lifecycles import drain, open_invoice
from receiver.app import create_app as create_receiver
from receiver_support import forget_queue, served
from vinr.client import RetryPolicy, VinrClient
from vinr.sandbox.app import create_app as create_sandbox
from vinr.sandbox.config import EndpointConfig, SandboxConfig
from vinr.sandbox.serving import serve
from vinr.sandbox.views import invoice_json

FAST = RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.01)
positions = InvoicePosition.__table__


class Pausing:
    """A loopback stand-in for the network between the run and VINR: it forwards each request,
    and the first answer for which `when(path, answer)` holds is handed back only after
    `meanwhile()` has run (or with `rewrite(path, answer)` applied to it)."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.when: Callable[[str, dict], bool] = lambda path, answer: False
        self.meanwhile: Callable[[], Awaitable[None]] | None = None
        self.rewrite: Callable[[str, dict], dict] | None = None
        self.held = asyncio.Event()  # set while an answer is held back
        self.app = Starlette(routes=[Route("/{path:path}", self.forward, methods=["GET"])])

    async def forward(self, request: Request) -> Response:
        async with httpx.AsyncClient() as http:
            upstream = await http.get(self.upstream + request.url.path, params=request.query_params,
                                      headers={"x-api-key": request.headers.get("x-api-key", "")})
        answer = upstream.json()
        if upstream.status_code == 200 and self.when(request.url.path, answer):
            self.when = lambda path, answer: False  # once
            self.held.set()
            if self.meanwhile is not None:
                await self.meanwhile()
            if self.rewrite is not None:
                return Response(json.dumps(self.rewrite(request.url.path, answer)), 200,
                                media_type="application/json")
        return Response(upstream.content, upstream.status_code, media_type="application/json")


@dataclass
class Deployment:
    sandbox: object
    state: object
    settings: object
    engine: object
    client: VinrClient  # through `pausing`
    pausing: Pausing
    customer: str

    async def settle(self) -> None:
        """Every webhook delivered so far is in the ledger."""
        await self.sandbox.deliveries_idle()
        await drain(self.settings)

    def new_open(self, amount: int) -> str:
        return open_invoice(self.state, self.customer, amount, metadata={"accountManager": "am@merchant.example"})

    async def position(self, invoice_id: str):
        async with self.engine.connect() as conn:
            return (await conn.execute(select(positions).where(positions.c.invoice_id == invoice_id))).one()


@asynccontextmanager
async def deployment(settings, engine, sandbox_config: SandboxConfig | None = None):
    """The sandbox delivering to the real receiver (its Redis queue drained by the real worker)."""
    settings = settings.model_copy(update={"vinr_api_key": None})
    receiver = create_receiver(settings)
    redis = Redis.from_url(settings.redis_url)
    try:
        async with served(receiver) as receiver_client:
            endpoint = EndpointConfig(str(receiver_client.base_url).rstrip("/") + "/webhooks/vinr", (WEBHOOK_SECRET,))
            config = sandbox_config or SandboxConfig(rate_limit=0)
            sandbox_app = create_sandbox(replace(config, endpoints=(endpoint,)))
            async with serve(sandbox_app) as sandbox_root:
                sandbox = sandbox_app.state.sandbox
                pausing = Pausing(sandbox_root)
                async with serve(pausing.app) as pausing_root:
                    async with VinrClient(pausing_root + "/v1", sandbox.api_key, retry=FAST) as client:
                        customer = sandbox.state.create_customer(email="ap@acme.example", name="Acme GmbH",
                                                                 metadata={}).id
                        yield Deployment(sandbox, sandbox.state, settings, engine, client, pausing, customer)
    finally:
        await forget_queue(redis, settings.queue_name)
        await redis.aclose()


async def ledger_equals_vinr(d: Deployment) -> None:
    await ledger_matches(d.engine, d.sandbox)


async def ledger_matches(engine, sandbox) -> None:
    """Every invoice of `sandbox` stands in the ledger as at VINR, and the books balance."""
    async with engine.connect() as conn:
        rows = {r.invoice_id: r for r in await conn.execute(select(positions))}
        balances = await trial_balance(conn)
    for inv in sandbox.state.invoices:
        if inv.status == "draft" and inv.id not in rows:
            continue  # a draft has no accounting effect: the ledger books it once an event names it
        snap = invoice_json(inv, sandbox.config.hosted_base)
        row = rows[inv.id]
        assert (row.status, row.total, row.amount_paid, row.amount_due) == (
            snap["status"], snap["total"], snap["amountPaid"], snap["amountDue"]), inv.id
    for currency in {c for _, c in balances}:
        assert sum(d for (_, c), (d, _) in balances.items() if c == currency) == sum(
            k for (_, c), (_, k) in balances.items() if c == currency)
