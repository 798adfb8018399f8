"""The sandbox's REST API (contract section 4), a Starlette app with every route under `/v1`.

    app = create_app(SandboxConfig(...))   # the Sandbox is on app.state.sandbox
    base_url = "http://127.0.0.1:PORT/v1"  # header X-Api-Key: app.state.sandbox.api_key

Every request passes `Sandbox.admit` (key, rate limit, injected faults) before its handler;
every refusal is `{"error": {"type", "code", "message"}}`. Webhooks are sent while the app's
lifespan runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from vinr.sandbox.config import SandboxConfig
from vinr.sandbox.delivery import attempt_json, endpoint_json
from vinr.sandbox.errors import SandboxError
from vinr.sandbox.params import Params, body_params, query_params
from vinr.sandbox.sandbox import Sandbox
from vinr.sandbox.state import EventRecord
from vinr.sandbox.views import customer_json, event_json, invoice_item_json, invoice_json

Handler = Callable[[Request, Sandbox], Awaitable[dict[str, Any]]]


def _error(exc: SandboxError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        sandbox: Sandbox = request.app.state.sandbox
        try:
            sandbox.admit(request.headers.get("x-api-key"))
            return JSONResponse(await handler(request, sandbox))
        except SandboxError as exc:
            return _error(exc)

    return endpoint


def _list(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": items, "hasMore": has_more}


def _id(request: Request) -> str:
    return request.path_params["id"]


def _invoice(sandbox: Sandbox, inv: Any) -> dict[str, Any]:
    return invoice_json(inv, sandbox.state.hosted_base)


def _line_amounts(p: Params) -> tuple[int, int]:
    """(quantity, unitAmount) from `quantity` and `unitAmount`, or from a one-off `amount`."""
    quantity = p.integer("quantity", 1)
    unit_amount = p.integer("unitAmount")
    if unit_amount is not None:
        return quantity, unit_amount
    amount = p.integer("amount")
    if amount is None:
        raise SandboxError(400, "parameter_missing", "Missing required param: unitAmount (or amount).")
    if quantity != 1:
        raise SandboxError(400, "parameter_invalid", "amount is the whole item: give unitAmount with quantity.")
    return 1, amount


# --- customers ---------------------------------------------------------------------------------


async def create_customer(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    p = await body_params(request)
    customer = sandbox.state.create_customer(p.text("email"), p.text("name"), p.metadata())
    return customer_json(customer)


async def get_customer(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    return customer_json(sandbox.state.customer(_id(request)))


async def list_customers(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    q = query_params(request)
    found, more = sandbox.state.list_customers(q.integer("limit", 10), q.text("starting_after"))
    return _list([customer_json(c) for c in found], more)


# --- invoice items and lines -------------------------------------------------------------------


async def create_invoice_item(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    p = await body_params(request)
    quantity, unit_amount = _line_amounts(p)
    item = sandbox.state.create_invoice_item(
        p.text("customer", required=True),
        unit_amount,
        quantity,
        p.text("currency", "EUR"),
        p.text("description"),
        p.text("invoice"),
    )
    return invoice_item_json(item)


async def get_invoice_item(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    return invoice_item_json(sandbox.state.invoice_item(_id(request)))


async def add_line(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    p = await body_params(request)
    quantity, unit_amount = _line_amounts(p)
    return _invoice(sandbox, sandbox.state.add_line(_id(request), unit_amount, quantity, p.text("description")))


async def update_line(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    p = await body_params(request)
    inv = sandbox.state.update_line(
        _id(request),
        request.path_params["line"],
        p.text("description"),
        p.integer("quantity"),
        p.integer("unitAmount"),
    )
    return _invoice(sandbox, inv)


async def remove_line(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    return _invoice(sandbox, sandbox.state.remove_line(_id(request), request.path_params["line"]))


# --- invoices ----------------------------------------------------------------------------------


async def create_invoice(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    p = await body_params(request)
    inv = sandbox.state.create_invoice(
        p.text("customer", required=True),
        p.text("currency", "EUR"),
        p.text("collectionMethod", "charge_automatically"),
        p.integer("daysUntilDue"),
        p.metadata(),
    )
    return _invoice(sandbox, inv)


async def get_invoice(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    return _invoice(sandbox, sandbox.state.invoice(_id(request)))


async def list_invoices(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    q = query_params(request)
    found, more = sandbox.state.list_invoices(
        q.integer("limit", 10),
        q.text("starting_after"),
        q.integer("created[gte]"),
        q.text("status"),
        q.text("customer"),
    )
    page = _list([_invoice(sandbox, inv) for inv in found], more)
    if sandbox.config.list_latency:
        await asyncio.sleep(sandbox.config.list_latency)  # read now, delivered later
    return page


def _transition(action: str) -> Handler:
    async def handler(request: Request, sandbox: Sandbox) -> dict[str, Any]:
        return _invoice(sandbox, getattr(sandbox.state, action)(_id(request)))

    return handler


async def pay_invoice(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    p = await body_params(request)
    inv = sandbox.state.pay(
        _id(request), p.text("card", required=True), p.text("threeDSecure"), p.integer("amount")
    )
    return _invoice(sandbox, inv)


# --- events ------------------------------------------------------------------------------------


def _event(sandbox: Sandbox, event: EventRecord) -> dict[str, Any]:
    """The event in its newer shape, plus every delivery attempt so far."""
    attempts = [attempt_json(a) for a in event.attempts or ()]
    return {**event_json(event, sandbox.state.hosted_base), "deliveryAttempts": attempts}


async def get_event(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    return _event(sandbox, sandbox.state.event(_id(request)))


async def list_events(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    q = query_params(request)
    found, more = sandbox.state.list_events(
        q.integer("limit", 10), q.text("starting_after"), q.integer("created[gte]"), q.text("type")
    )
    return _list([_event(sandbox, e) for e in found], more)


# --- webhook endpoints -------------------------------------------------------------------------


async def create_webhook_endpoint(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    p = await body_params(request)
    secrets = p.strings("secrets") or p.strings("secret")
    endpoint = sandbox.add_endpoint(p.text("url", required=True), secrets)
    # Shown this once, so that a generated secret can be configured on the receiving side.
    return {**endpoint_json(endpoint), "secrets": list(endpoint.secrets)}


async def list_webhook_endpoints(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    return _list([endpoint_json(e) for e in sandbox.deliverer.endpoints], False)


async def delete_webhook_endpoint(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    return {**endpoint_json(sandbox.remove_endpoint(_id(request))), "deleted": True}


ROUTES = [
    Route("/customers", _api(create_customer), methods=["POST"]),
    Route("/customers", _api(list_customers), methods=["GET"]),
    Route("/customers/{id}", _api(get_customer), methods=["GET"]),
    Route("/invoiceitems", _api(create_invoice_item), methods=["POST"]),
    Route("/invoiceitems/{id}", _api(get_invoice_item), methods=["GET"]),
    Route("/invoices", _api(create_invoice), methods=["POST"]),
    Route("/invoices", _api(list_invoices), methods=["GET"]),
    Route("/invoices/{id}", _api(get_invoice), methods=["GET"]),
    Route("/invoices/{id}/lines", _api(add_line), methods=["POST"]),
    Route("/invoices/{id}/lines/{line}", _api(update_line), methods=["POST"]),
    Route("/invoices/{id}/lines/{line}", _api(remove_line), methods=["DELETE"]),
    Route("/invoices/{id}/finalize", _api(_transition("finalize")), methods=["POST"]),
    Route("/invoices/{id}/send", _api(_transition("send")), methods=["POST"]),
    Route("/invoices/{id}/void", _api(_transition("void")), methods=["POST"]),
    Route("/invoices/{id}/mark_uncollectible", _api(_transition("mark_uncollectible")), methods=["POST"]),
    Route("/invoices/{id}/pay", _api(pay_invoice), methods=["POST"]),
    Route("/events", _api(list_events), methods=["GET"]),
    Route("/events/{id}", _api(get_event), methods=["GET"]),
    Route("/webhook_endpoints", _api(create_webhook_endpoint), methods=["POST"]),
    Route("/webhook_endpoints", _api(list_webhook_endpoints), methods=["GET"]),
    Route("/webhook_endpoints/{id}", _api(delete_webhook_endpoint), methods=["DELETE"]),
]


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown paths and methods answer in the contract's error shape too.
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "resource_missing", 405: "method_not_allowed"}.get(status, "invalid_request")
    return _error(SandboxError(status, code, f"Unrecognized request: {request.method} {request.url.path}"))


def create_app(config: SandboxConfig | None = None, *, sandbox: Sandbox | None = None) -> Starlette:
    """The sandbox as an ASGI app; pass a `Sandbox` to share one, else one is built from `config`."""
    sandbox = sandbox or Sandbox(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with sandbox.delivering():
            yield

    app = Starlette(
        routes=[Mount("/v1", routes=ROUTES)],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.sandbox = sandbox
    return app
