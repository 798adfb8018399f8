"""The merchant's read API (contract section 5), behind a bearer-token guard.

`GET /api/invoices/{id}`, `/api/balances[?asOf=]`, `/api/journal.csv?from=&to=`,
`/api/reconciliation/runs[/{id}]` (and a run's findings as CSV). Handlers read through the engine
the lifespan opened (`request.state.engine`, see receiver.app.ReceiverState); every answer is a
model of ledger.shapes, built by ledger.views, ledger.journal or ledger.runs.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import date

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.journal import balances_as_of, csv_chunks, journal_rows
from ledger.runs import get_run, list_runs, write_csv
from ledger.shapes import Runs
from ledger.views import balances, invoice_view
from receiver.aging_api import get_aging
from receiver.answers import answer, refusal
from vinr_recon.settings import Settings
from vinr_recon.tokens import token_matches

MAX_RUNS_PAGE = 200
# Ids are the database's integer keys (32-bit on PostgreSQL): beyond, nothing can exist, and
# the driver would refuse the parameter with an error instead of finding no row.
MAX_ID = 2**31 - 1
# VINR ids are short printable strings; anything else (a NUL, which PostgreSQL refuses in a
# string parameter) names no invoice.
MAX_INVOICE_ID = 100


def _not_found(what: str) -> JSONResponse:
    return refusal(404, f"{what} not found")


async def get_invoice(request: Request) -> Response:
    invoice_id = request.path_params["invoice_id"]
    if len(invoice_id) > MAX_INVOICE_ID or not invoice_id.isprintable():
        return _not_found(f"invoice {invoice_id}")
    async with request.state.engine.connect() as conn:
        view = await invoice_view(conn, invoice_id)
    return answer(view) if view is not None else _not_found(f"invoice {invoice_id}")


def _query_day(request: Request, name: str) -> date | None:
    """The `YYYY-MM-DD` of query parameter `name`, None when absent; ValueError when malformed."""
    text = request.query_params.get(name)
    if text is None:
        return None
    if len(text) != 10:  # fromisoformat also takes 20261130 and week dates: one spelling only
        raise ValueError(text)
    return date.fromisoformat(text)


async def get_balances(request: Request) -> Response:
    """Every posting, or with `?asOf=YYYY-MM-DD` those effective up to the end of that UTC day."""
    try:
        as_of = _query_day(request, "asOf")
    except ValueError:
        return refusal(400, "asOf must be a date, YYYY-MM-DD")
    async with request.state.engine.connect() as conn:
        return answer(await (balances(conn) if as_of is None else balances_as_of(conn, as_of)))


async def get_journal_csv(request: Request) -> Response:
    """`?from=&to=` (UTC days, both included): one CSV row per posting, streamed from a cursor."""
    try:
        start, end = _query_day(request, "from"), _query_day(request, "to")
    except ValueError:
        return refusal(400, "from and to must be dates, YYYY-MM-DD")
    if start is None or end is None:
        return refusal(400, "from and to are required (YYYY-MM-DD, both included)")
    if end < start:
        return refusal(400, "to is before from")
    engine: AsyncEngine = request.state.engine

    async def body() -> AsyncIterator[bytes]:
        # The connection lives as long as the response: the cursor is read as the client reads.
        async with engine.connect() as conn:
            async for chunk in csv_chunks(journal_rows(conn, start, end)):
                yield chunk.encode()

    return StreamingResponse(body(), media_type="text/csv; charset=utf-8", headers={
        "content-disposition": f'attachment; filename="journal-{start}-{end}.csv"'})


async def get_runs(request: Request) -> Response:
    """Newest first; `?limit=` (at most 200) and `?before=<run id>` page back through history."""
    try:
        limit = min(int(request.query_params.get("limit", 50)), MAX_RUNS_PAGE)
        given = request.query_params.get("before")
        before = int(given) if given is not None else None
    except ValueError:
        return refusal(400, "limit and before must be integers")
    if limit < 1:
        return refusal(400, "limit must be at least 1")
    if before is not None and not 0 <= before <= MAX_ID:
        return refusal(400, f"before must be a run id, 0 to {MAX_ID}")
    async with request.state.engine.connect() as conn:
        return answer(Runs(runs=await list_runs(conn, limit=limit, before=before)))


async def get_run_by_id(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    if run_id > MAX_ID:
        return _not_found(f"reconciliation run {run_id}")
    async with request.state.engine.connect() as conn:
        run = await get_run(conn, run_id)
    return answer(run) if run is not None else _not_found(f"reconciliation run {run_id}")


async def get_run_csv(request: Request) -> Response:
    """The run's findings as the CSV that `vinr-recon reconcile --report` writes."""
    run_id = request.path_params["run_id"]
    if run_id > MAX_ID:
        return _not_found(f"reconciliation run {run_id}")
    out = io.StringIO()
    async with request.state.engine.connect() as conn:
        if await get_run(conn, run_id) is None:
            return _not_found(f"reconciliation run {run_id}")
        await write_csv(conn, run_id, out)
    return Response(out.getvalue(), media_type="text/csv", headers={
        "content-disposition": f'attachment; filename="reconciliation-run-{run_id}.csv"'})


# Mounted at /api, behind the token guard.
routes = [
    Route("/invoices/{invoice_id}", get_invoice, methods=["GET"]),
    Route("/balances", get_balances, methods=["GET"]),
    Route("/aging", get_aging, methods=["GET"]),
    Route("/journal.csv", get_journal_csv, methods=["GET"]),
    Route("/reconciliation/runs", get_runs, methods=["GET"]),
    Route("/reconciliation/runs/{run_id:int}", get_run_by_id, methods=["GET"]),
    Route("/reconciliation/runs/{run_id:int}/findings.csv", get_run_csv, methods=["GET"]),
]


class RequireBearerToken:
    """ASGI middleware: `Authorization: Bearer <token>` with a configured token, or no entry.

    With no token configured the API answers 503: it never serves openly. Every answer, refusals
    included, carries `X-Content-Type-Options: nosniff` (a browser never guesses a CSV is HTML).
    """

    def __init__(self, app: ASGIApp, tokens: list[str]) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("x-content-type-options", "nosniff")
            await send(message)

        if not self.tokens:
            response = refusal(503, "LEDGER_API_TOKEN is not configured")
        elif token_matches(bearer_token(scope), self.tokens):
            await self.app(scope, receive, send_nosniff)
            return
        else:
            response = refusal(401, "missing or invalid bearer token", {"www-authenticate": "Bearer"})
        await response(scope, receive, send_nosniff)


def bearer_token(scope: Scope) -> str:
    """The token of the request's `Authorization: Bearer <token>`, or "" when there is none."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def api_mount(settings: Settings) -> Mount:
    """`/api` with `routes`, guarded by the tokens of `LEDGER_API_TOKEN`."""
    # No trailing-slash redirects: Starlette builds them from the Host header.
    return Mount("/api", app=Router(routes, redirect_slashes=False),
                 middleware=[Middleware(RequireBearerToken, tokens=settings.api_tokens)])
