"""The REST client against a small fake of VINR's API, served by uvicorn on loopback.

The fake records what each request asked for and can be told to answer the next requests with
a fault (a 429, a 503, any body), so retries, pagination and errors are checked over real HTTP.
Sleeps are recorded instead of waited; nothing here is mocked.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import structlog
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vinr.client import (
    AuthenticationError,
    InvalidRequest,
    InvalidResponse,
    NotFound,
    RateLimited,
    RetryPolicy,
    ServerError,
    VinrClient,
)
from vinr.events import Invoice, parse_event
from vinr_recon.settings import ConfigurationError, vinr_client

API_KEY = "vinr_sk_test_" + "Zq7" * 8
WRONG_KEY = "vinr_sk_test_" + "Wx4" * 8
# Sleeps are recorded, not waited, so real-looking delays cost nothing and their bounds can be checked.
POLICY = RetryPolicy(max_attempts=4, base_delay=1.0, max_delay=4.0, max_retry_after=60.0)


# --- the fake VINR ------------------------------------------------------------------------


def invoice(n: int, status: str = "open", created: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"inv_{n}",
        "object": "invoice",
        "customer": "cust_1",
        "status": status,
        "currency": "EUR",
        "total": 1000 * n,
        "amountPaid": 1000 * n if status == "paid" else 0,
        "amountDue": 0 if status == "paid" else 1000 * n,
        "created": created if created is not None else 1_763_800_000 + n,
        **extra,
    }


def event(n: int, type_: str = "invoice.paid") -> dict[str, Any]:
    return {
        "id": f"evt_{n}",
        "object": "event",
        "type": type_,
        "created": 1_763_800_000 + n,
        "data": {"object": invoice(n, "paid")},
    }


def error_body(type_: str, code: str, message: str) -> dict[str, Any]:
    return {"error": {"type": type_, "code": code, "message": message}}


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]


@dataclass
class FakeVinr:
    invoices: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (status, headers, JSON body or raw text) answered, in order, before any real handling.
    faults: deque[tuple[int, dict[str, str], Any]] = field(default_factory=deque)
    seen: list[Seen] = field(default_factory=list)
    posted: list[Any] = field(default_factory=list)

    def fail_next(self, status: int, body: Any = None, times: int = 1, **headers: str) -> None:
        if body is None:
            body = error_body("api_error", "server_error", "transient") if status >= 500 else {}
        self.faults.extend([(status, {k.replace("_", "-"): v for k, v in headers.items()}, body)] * times)

    def starting_afters(self) -> list[str | None]:
        return [s.query.get("starting_after") for s in self.seen]

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/invoices", self._guard(self._list_invoices)),
                Route("/v1/invoices/{id}", self._guard(self._get_invoice)),
                Route("/v1/events", self._guard(self._list_events)),
                Route("/v1/customers", self._guard(self._create_customer), methods=["POST"]),
                Route("/v1/customers/{id}", self._guard(self._get_customer)),
            ]
        )

    def _guard(self, handler):
        async def endpoint(request: Request) -> Response:
            self.seen.append(Seen(request.method, request.url.path, dict(request.query_params)))
            if self.faults:
                status, headers, body = self.faults.popleft()
                if isinstance(body, str):
                    return Response(body, status, headers=headers, media_type="text/html")
                return JSONResponse(body, status, headers=headers)
            key = request.headers.get("x-api-key")
            if key != API_KEY:
                # Echo the refused key, as careless servers do: the client must not repeat it.
                message = f"Invalid API key provided: {key}"
                return JSONResponse(error_body("authentication_error", "invalid_api_key", message), 401)
            return await handler(request)

        return endpoint

    @staticmethod
    def _page(items: list[dict[str, Any]], request: Request) -> Response:
        query = request.query_params
        if "created[gte]" in query:
            items = [i for i in items if i["created"] >= int(query["created[gte]"])]
        for name in ("status", "type"):
            if name in query:
                items = [i for i in items if i[name] == query[name]]
        if "starting_after" in query:
            ids = [i["id"] for i in items]
            items = items[ids.index(query["starting_after"]) + 1 :]
        limit = int(query.get("limit", 10))
        return JSONResponse({"object": "list", "data": items[:limit], "hasMore": len(items) > limit})

    async def _list_invoices(self, request: Request) -> Response:
        return self._page(self.invoices, request)

    async def _list_events(self, request: Request) -> Response:
        return self._page(self.events, request)

    async def _get_invoice(self, request: Request) -> Response:
        return self._get(self.invoices, request.path_params["id"])

    async def _get_customer(self, request: Request) -> Response:
        return self._get(list(self.customers.values()), request.path_params["id"])

    @staticmethod
    def _get(items: list[dict[str, Any]], object_id: str) -> Response:
        for item in items:
            if item["id"] == object_id:
                return JSONResponse(item)
        missing = error_body("invalid_request_error", "resource_missing", f"No such object: '{object_id}'")
        return JSONResponse(missing, 404)

    async def _create_customer(self, request: Request) -> Response:
        body = await request.json()
        self.posted.append(body)
        customer = {"id": f"cust_{len(self.customers) + 1}", "object": "customer", "metadata": {}, **body}
        self.customers[customer["id"]] = customer
        return JSONResponse(customer)


class Swappable:
    """The ASGI app the server runs: forwards to the current test's fake."""

    app: Starlette | None = None

    async def __call__(self, scope, receive, send) -> None:
        assert self.app is not None
        await self.app(scope, receive, send)


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    """uvicorn on a free loopback port, in a thread, for the whole module."""
    front = Swappable()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(front, lifespan="off", ws="none", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield front, f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def vinr(server) -> FakeVinr:
    customer = {"id": "cust_1", "email": "a@example.com", "name": "A", "metadata": {}}
    fake = FakeVinr(customers={"cust_1": customer})
    server[0].app = fake.app
    return fake


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
async def make_client(server, sleeps):
    """Build clients on the loopback server (or elsewhere) that record their sleeps; closed after."""
    clients: list[VinrClient] = []

    async def record(delay: float) -> None:
        sleeps.append(delay)

    def make(base_url: str | None = None, api_key: str = API_KEY, **kwargs: Any) -> VinrClient:
        kwargs.setdefault("retry", POLICY)
        kwargs.setdefault("sleep", record)
        client = VinrClient(base_url or server[1], api_key, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}/v1"


# --- pagination ---------------------------------------------------------------------------


async def test_pages_through_every_invoice_with_starting_after(vinr, make_client):
    vinr.invoices = [invoice(n) for n in range(1, 8)]
    client = make_client()

    invoices = [inv async for inv in client.iter_invoices(limit=3)]

    assert all(isinstance(inv, Invoice) for inv in invoices)
    assert [inv.id for inv in invoices] == [f"inv_{n}" for n in range(1, 8)]
    assert invoices[6].amount_due == 7000
    assert vinr.starting_afters() == [None, "inv_3", "inv_6"]
    assert {s.query["limit"] for s in vinr.seen} == {"3"}
    assert client.requests_made == 3


async def test_fetches_only_the_pages_the_consumer_reads(vinr, make_client):
    vinr.invoices = [invoice(n) for n in range(1, 11)]
    client = make_client()

    taken = []
    async with aclosing(client.iter_invoices(limit=3)) as invoices:
        async for inv in invoices:
            taken.append(inv.id)
            if len(taken) == 4:
                break

    assert taken == ["inv_1", "inv_2", "inv_3", "inv_4"]
    assert vinr.starting_afters() == [None, "inv_3"]


async def test_filters_are_passed_through(vinr, make_client):
    vinr.invoices = [invoice(1, "paid", created=100), invoice(2, "open", created=200)] + [
        invoice(n, "paid", created=300 + n) for n in range(3, 6)
    ]
    client = make_client()

    since = datetime.fromtimestamp(200, UTC)
    paid = [inv.id async for inv in client.iter_invoices(created_gte=since, status="paid", limit=2)]

    assert paid == ["inv_3", "inv_4", "inv_5"]
    assert vinr.seen[0].query == {"created[gte]": "200", "status": "paid", "limit": "2"}
    assert vinr.seen[1].query == {**vinr.seen[0].query, "starting_after": "inv_4"}


async def test_iter_events_yields_events_as_received_page_by_page(vinr, make_client):
    vinr.events = [event(n, "invoice.paid" if n % 2 else "invoice.created") for n in range(1, 8)]
    client = make_client()

    events = [ev async for ev in client.iter_events(created_gte=1_763_800_002, type="invoice.paid", limit=2)]

    assert events == [vinr.events[2], vinr.events[4], vinr.events[6]]
    assert parse_event(events[0]).invoice().status == "paid"
    assert vinr.starting_afters() == [None, "evt_5"]
    assert vinr.seen[0].query == {"created[gte]": "1763800002", "type": "invoice.paid", "limit": "2"}


async def test_an_empty_page_that_claims_more_ends_the_list(vinr, make_client):
    vinr.fail_next(200, {"object": "list", "data": [], "hasMore": True})
    client = make_client()

    assert [inv async for inv in client.iter_invoices()] == []
    assert client.requests_made == 1


async def test_limit_above_the_page_size_is_refused(make_client):
    with pytest.raises(ValueError):
        async for _ in make_client().iter_invoices(limit=101):
            pass


# --- single objects -----------------------------------------------------------------------


async def test_get_invoice_and_customer(vinr, make_client):
    vinr.invoices = [invoice(1, metadata={"projectId": "proj_1"})]
    client = make_client()

    inv = await client.get_invoice("inv_1")
    customer = await client.get_customer("cust_1")

    assert (inv.id, inv.status, inv.total, inv.metadata) == ("inv_1", "open", 1000, {"projectId": "proj_1"})
    assert customer["email"] == "a@example.com"
    assert [s.path for s in vinr.seen] == ["/v1/invoices/inv_1", "/v1/customers/cust_1"]


async def test_request_posts_json(vinr, make_client):
    client = make_client()

    customer = await client.request("POST", "/customers", json={"email": "b@example.com", "name": "B"})

    assert customer["id"] == "cust_2" and customer["email"] == "b@example.com"
    assert vinr.posted == [{"email": "b@example.com", "name": "B"}]


async def test_an_invoice_that_breaks_the_contract_is_an_invalid_response(vinr, make_client):
    vinr.invoices = [invoice(1, amountDue=10.5)]

    with pytest.raises(InvalidResponse) as caught:
        await make_client().get_invoice("inv_1")

    assert "inv_1" in caught.value.message and "amountDue" in caught.value.message


# --- retries ------------------------------------------------------------------------------


async def test_429_waits_as_long_as_retry_after_says_then_succeeds(vinr, make_client, sleeps):
    vinr.invoices = [invoice(1)]
    vinr.fail_next(429, error_body("rate_limit_error", "rate_limit", "Too many requests"), retry_after="7")
    client = make_client()

    with structlog.testing.capture_logs() as logs:
        inv = await client.get_invoice("inv_1")

    assert inv.id == "inv_1"
    assert sleeps == [7.0]
    assert client.requests_made == 2
    assert logs == [
        {
            "event": "vinr_request_retry",
            "log_level": "warning",
            "method": "GET",
            "path": "/invoices/inv_1",
            "status": 429,
            "error": "rate_limit",
            "attempt": 1,
            "delay": 7.0,
        }
    ]


async def test_429_asking_for_longer_than_the_client_waits_fails_at_once(vinr, make_client, sleeps):
    vinr.fail_next(429, error_body("rate_limit_error", "rate_limit", "Slow down"), retry_after="3600")
    client = make_client()

    with pytest.raises(RateLimited) as caught:
        await client.get_invoice("inv_1")

    assert (caught.value.status, caught.value.retry_after) == (429, 3600.0)
    assert sleeps == [] and client.requests_made == 1


async def test_429_on_every_try_is_rate_limited(vinr, make_client, sleeps):
    vinr.fail_next(429, error_body("rate_limit_error", "rate_limit", "Slow down"), times=10)
    client = make_client()

    with pytest.raises(RateLimited) as caught:
        await client.get_invoice("inv_1")

    assert caught.value.code == "rate_limit"
    assert client.requests_made == POLICY.max_attempts
    # No Retry-After: the backoff applies.
    assert len(sleeps) == POLICY.max_attempts - 1 and all(0 <= s <= POLICY.max_delay for s in sleeps)


async def test_503_then_success(vinr, make_client, sleeps):
    vinr.invoices = [invoice(1)]
    vinr.fail_next(503)
    client = make_client()

    assert (await client.get_invoice("inv_1")).id == "inv_1"
    assert client.requests_made == 2
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= POLICY.base_delay


async def test_5xx_is_retried_up_to_the_cap_with_capped_backoff(vinr, make_client, sleeps):
    policy = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=4.0)
    vinr.fail_next(502, "<html>Bad gateway</html>", times=10)
    client = make_client(retry=policy)

    with pytest.raises(ServerError) as caught:
        await client.get_invoice("inv_1")

    assert caught.value.status == 502 and "Bad gateway" in caught.value.message
    assert client.requests_made == 6
    ceilings = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(sleeps) == 5 and all(0 <= s <= c for s, c in zip(sleeps, ceilings, strict=True))


async def test_a_page_request_is_retried_in_the_middle_of_a_list(vinr, make_client):
    vinr.invoices = [invoice(n) for n in range(1, 6)]
    client = make_client()

    ids = []
    async for inv in client.iter_invoices(limit=2):
        ids.append(inv.id)
        if inv.id == "inv_2":
            vinr.fail_next(500)  # the next page's first try fails

    assert ids == [f"inv_{n}" for n in range(1, 6)]
    assert vinr.starting_afters() == [None, "inv_2", "inv_2", "inv_4"]


async def test_connection_refused_is_retried_then_a_server_error(make_client, sleeps):
    client = make_client(base_url=closed_port_url())

    with pytest.raises(ServerError) as caught:
        await client.get_invoice("inv_1")

    assert caught.value.status is None and caught.value.code == "connection_error"
    assert "ConnectError" in caught.value.message
    # The httpx exception (which holds the request and its headers) is not kept.
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert client.requests_made == POLICY.max_attempts and len(sleeps) == POLICY.max_attempts - 1


# --- errors that are not retried ----------------------------------------------------------


async def test_404_is_not_found_without_retry(vinr, make_client, sleeps):
    client = make_client()

    with pytest.raises(NotFound) as caught:
        await client.get_invoice("inv_missing")

    error = caught.value
    assert (error.status, error.code) == (404, "resource_missing")
    assert (error.method, error.path) == ("GET", "/invoices/inv_missing")
    assert "No such object: 'inv_missing'" in str(error)
    assert client.requests_made == 1 and sleeps == []


async def test_401_is_an_authentication_error_without_retry(vinr, make_client, sleeps):
    client = make_client(api_key=WRONG_KEY)

    with pytest.raises(AuthenticationError) as caught:
        await client.get_invoice("inv_1")

    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
    assert client.requests_made == 1 and sleeps == []


async def test_400_is_an_invalid_request_without_retry(vinr, make_client, sleeps):
    vinr.fail_next(400, error_body("invalid_request_error", "parameter_invalid", "limit must be at most 100"))
    client = make_client()

    with pytest.raises(InvalidRequest) as caught:
        async for _ in client.iter_invoices():
            pass

    assert (caught.value.status, caught.value.code) == (400, "parameter_invalid")
    assert client.requests_made == 1 and sleeps == []


async def test_post_is_not_repeated_after_a_5xx_unless_declared_idempotent(vinr, make_client):
    client = make_client()

    vinr.fail_next(503)
    with pytest.raises(ServerError):
        await client.request("POST", "/customers", json={"email": "c@example.com"})
    assert client.requests_made == 1 and vinr.posted == []

    vinr.fail_next(503)
    await client.request("POST", "/customers", json={"email": "c@example.com"}, idempotent=True)
    assert client.requests_made == 3 and len(vinr.posted) == 1


async def test_post_is_repeated_after_a_429_or_a_refused_connection(vinr, make_client, sleeps):
    client = make_client()
    vinr.fail_next(429, error_body("rate_limit_error", "rate_limit", "Slow down"), retry_after="0")

    await client.request("POST", "/customers", json={"email": "d@example.com"})
    assert client.requests_made == 2 and sleeps == [0.0]

    refused = make_client(base_url=closed_port_url())
    with pytest.raises(ServerError):
        await refused.request("POST", "/customers", json={"email": "d@example.com"})
    assert refused.requests_made == POLICY.max_attempts


# --- the key stays secret -----------------------------------------------------------------


async def test_the_api_key_appears_in_no_repr_error_or_log(vinr, make_client, caplog):
    caplog.set_level(logging.DEBUG)
    vinr.invoices = [invoice(1)]
    client = make_client()
    wrong = make_client(api_key=WRONG_KEY)
    refused = make_client(base_url=closed_port_url())
    vinr.fail_next(429, error_body("rate_limit_error", "rate_limit", "Slow down"), retry_after="0")
    vinr.fail_next(503)

    errors: list[Exception] = []
    with structlog.testing.capture_logs() as logs:
        assert (await client.get_invoice("inv_1")).id == "inv_1"  # the key was sent, after two retries
        for call in (wrong.get_invoice("inv_1"), client.get_invoice("inv_404"), refused.get_invoice("inv_1")):
            try:
                await call
            except Exception as exc:  # noqa: BLE001 - collecting them is the point
                errors.append(exc)

    assert [type(e) for e in errors] == [AuthenticationError, NotFound, ServerError]
    assert "[redacted]" in errors[0].message  # the server echoed the wrong key
    assert len(logs) == 2 + POLICY.max_attempts - 1
    texts = [repr(client), str(client), repr(client._http.headers), repr(logs), caplog.text]
    texts += [repr(e) for e in errors] + [str(e) for e in errors] + [repr(vars(e)) for e in errors]
    for text in texts:
        assert API_KEY not in text and WRONG_KEY not in text


# --- construction -------------------------------------------------------------------------


async def test_runs_in_process_on_an_asgi_transport(vinr):
    vinr.invoices = [invoice(1)]

    async with VinrClient("http://vinr.test/v1", API_KEY, transport=httpx.ASGITransport(vinr.app)) as client:
        assert (await client.get_invoice("inv_1")).id == "inv_1"

    assert vinr.seen[0].path == "/v1/invoices/inv_1"


async def test_the_client_from_settings_needs_the_key_and_uses_the_base(vinr, settings):
    with pytest.raises(ConfigurationError, match="VINR_API_KEY"):
        vinr_client(settings)

    configured = settings.model_copy(
        update={"vinr_api_key": SecretStr(API_KEY), "vinr_api_base": "http://vinr.test/v1"}
    )
    vinr.invoices = [invoice(1)]
    transport = httpx.ASGITransport(vinr.app)
    async with vinr_client(configured, transport=transport, retry=POLICY) as client:
        assert (await client.get_invoice("inv_1")).id == "inv_1"
        assert client.retry is POLICY


async def test_a_paced_client_spaces_its_requests_retries_included(vinr, make_client, sleeps):
    vinr.invoices = [invoice(1)]
    client = make_client(rate=10)  # 10 requests a second: 100 ms apart
    for _ in range(4):
        assert (await client.get_invoice("inv_1")).id == "inv_1"
    vinr.fail_next(503, error_body("api_error", "unavailable", "try again"), retry_after="7")
    await client.get_invoice("inv_1")  # one retry: its attempt waits its turn too
    assert client.requests_made == 6 and sleeps.count(7.0) == 1
    pacing = [s for s in sleeps if s != 7.0]
    # Each request waits until 100 ms after the one before (the recorded sleep returns at once,
    # so the slots add up from the first request's time).
    assert len(pacing) == 5
    for n, waited in enumerate(pacing, start=1):
        assert n * 0.1 - 0.08 <= waited <= n * 0.1 + 1e-9, pacing


async def test_an_unpaced_client_never_waits_between_requests(vinr, make_client, sleeps):
    vinr.invoices = [invoice(1)]
    client = make_client()
    for _ in range(5):
        await client.get_invoice("inv_1")
    assert sleeps == []
