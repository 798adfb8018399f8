"""VINR's REST API, as the reconciliation sees it (contract section 4).

One `httpx.AsyncClient` per `VinrClient`; the transport is injectable, so tests and the demo can
talk to an ASGI app in-process. Lists are paged lazily with `starting_after`. Transient failures
(429, 5xx, connection errors and timeouts) are retried with capped exponential backoff and full
jitter, a 429 waits as long as its `Retry-After` says; other 4xx are never retried. Every failure
is a `VinrError` subclass carrying status, VINR's error code and message, and nothing else: no
request, no headers, so the API key cannot leak through an exception, a repr or a log line.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from pydantic import SecretStr, ValidationError

from vinr.events import Invoice, describe_errors

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
MAX_PAGE_SIZE = 100

# Methods whose repetition cannot do twice what was asked once.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Transport failures worth another try; the others (a malformed URL, say) would fail again.
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Failures where the request never reached VINR, so even a POST is safe to send again.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


# --- errors -------------------------------------------------------------------------------


class VinrError(Exception):
    """A call to VINR failed. `status` is None when no HTTP answer came back."""

    def __init__(
        self, status: int | None, code: str | None, message: str, *, method: str = "", path: str = ""
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.method = method
        self.path = path
        where = f" ({method} {path})" if method else ""
        super().__init__(f"{status or '-'} {code or 'error'}: {message}{where}")


class AuthenticationError(VinrError):
    """401: the API key is missing, wrong or revoked."""


class NotFound(VinrError):
    """404: no such object (`resource_missing`)."""


class InvalidRequest(VinrError):
    """Any other 4xx: the request itself is wrong, so retrying cannot help."""


class RateLimited(VinrError):
    """429 after the last try, or a `Retry-After` longer than the client will wait."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class ServerError(VinrError):
    """5xx, a connection failure or a timeout, after the last try."""


class InvalidResponse(VinrError):
    """VINR answered 2xx with a body that is not what the contract promises."""


def _error_class(status: int) -> type[VinrError]:
    if status == 401:
        return AuthenticationError
    if status == 404:
        return NotFound
    if status == 429:
        return RateLimited
    if status >= 500:
        return ServerError
    return InvalidRequest


# --- retry policy -------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. `max_attempts` counts the first try; delays are seconds."""

    max_attempts: int = 5
    base_delay: float = 0.5  # ceiling of the first backoff; doubles each retry
    max_delay: float = 30.0  # cap on any one backoff
    max_retry_after: float = 60.0  # a 429 asking for longer than this fails at once

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or min(self.base_delay, self.max_delay, self.max_retry_after) < 0:
            raise ValueError("max_attempts must be at least 1 and delays not negative")

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**(attempt-1))]."""
        return random.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


def _retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds, or None when absent or not a number (the contract uses seconds)."""
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


class _ApiKeyAuth(httpx.Auth):
    """Adds `X-Api-Key` to each request as it goes out, so the key is not in the client's headers."""

    def __init__(self, api_key: SecretStr) -> None:
        self._api_key = api_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["X-Api-Key"] = self._api_key.get_secret_value()
        yield request


# --- the client ---------------------------------------------------------------------------


class VinrClient:
    """An async client of VINR's REST API; use as `async with VinrClient(...) as client:`.

    `requests_made` counts HTTP attempts, retries included, for comparing against the minimum.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rate: float = 0.0,
    ) -> None:
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        if not self._api_key.get_secret_value():
            raise ValueError("api_key must not be empty")
        self.base_url = base_url
        self.retry = retry
        self._sleep = sleep
        self.rate = rate  # requests per second at most; 0: unpaced
        self._next_slot = 0.0  # the event loop's time at which the next request may leave
        self.requests_made = 0
        self._http = httpx.AsyncClient(
            base_url=base_url,
            auth=_ApiKeyAuth(self._api_key),
            headers={"Accept": "application/json", "User-Agent": "vinr-recon"},
            timeout=timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"VinrClient(base_url={self.base_url!r}, requests_made={self.requests_made})"

    async def __aenter__(self) -> VinrClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- one call, with retries ---

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Send one API call, retrying transient failures; return the decoded JSON body (None if empty).

        `path` is relative to the base URL (`/invoices/inv_1`). By default a POST is retried only
        when VINR certainly did not act on it (429, or no connection made), since VINR offers no
        idempotency keys; pass `idempotent=True` for a POST that is safe to repeat.
        Raises a `VinrError` subclass.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in _IDEMPOTENT_METHODS
        for attempt in range(1, self.retry.max_attempts + 1):
            await self._pace()
            self.requests_made += 1
            wait: float | None = None
            try:
                response = await self._http.request(method, path, params=params, json=json)
            except httpx.TransportError as exc:
                retryable = isinstance(exc, _TRANSIENT) and (idempotent or isinstance(exc, _NEVER_SENT))
                # Built from the exception's class and text only: the exception holds the
                # request, headers and key included, so it is neither kept nor chained.
                error_class = ServerError if isinstance(exc, _TRANSIENT) else VinrError
                failure = error_class(
                    None, "connection_error", f"{type(exc).__name__}: {exc}", method=method, path=path
                )
                status = None
            else:
                if response.is_success:
                    return self._decode(response, method, path)
                failure = self._error(response, method, path)
                status = response.status_code
                retryable = status == 429 or (status >= 500 and idempotent)
                wait = _retry_after(response) if retryable else None
                if wait is not None and wait > self.retry.max_retry_after:
                    raise failure  # waiting that long is the caller's decision, not ours
            if not retryable or attempt == self.retry.max_attempts:
                raise failure
            delay = wait if wait is not None else self.retry.backoff(attempt)
            log.warning(
                "vinr_request_retry",
                method=method,
                path=path,
                status=status,
                error=failure.code,
                attempt=attempt,
                delay=round(delay, 3),
            )
            await self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _pace(self) -> None:
        """Space requests `1 / rate` apart, retries included: VINR's rate limit is per key, so a
        client that keeps under it never meets a 429 of its own making."""
        if not self.rate:
            return
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1 / self.rate
        if slot > now:
            await self._sleep(slot - now)

    def _decode(self, response: httpx.Response, method: str, path: str) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise InvalidResponse(
                response.status_code, "invalid_json", "the body is not JSON", method=method, path=path
            ) from None

    def _error(self, response: httpx.Response, method: str, path: str) -> VinrError:
        """The typed error for a non-2xx answer, from VINR's `{"error": {...}}` body when it has one."""
        code, message = None, response.reason_phrase or "HTTP error"
        try:
            body = response.json()
        except ValueError:
            body = None
            if response.text.strip():
                message = response.text.strip()[:200]
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = body["error"].get("code") or body["error"].get("type")
            message = str(body["error"].get("message") or message)
        # A server may echo the key it refused; never let it into our message.
        message = message.replace(self._api_key.get_secret_value(), "[redacted]")
        kwargs: dict[str, Any] = {"method": method, "path": path}
        if response.status_code == 429:
            kwargs["retry_after"] = _retry_after(response)
        return _error_class(response.status_code)(response.status_code, code, message, **kwargs)

    # --- single objects ---

    async def get_invoice(self, invoice_id: str) -> Invoice:
        """The invoice as VINR has it now. Raises `NotFound` if there is none."""
        path = f"/invoices/{_segment(invoice_id)}"
        return _invoice(await self.request("GET", path), path)

    async def get_customer(self, customer_id: str) -> dict[str, Any]:
        """The customer (`id`, `email`, `name`, `metadata`) as a dict. Raises `NotFound` if there is none."""
        path = f"/customers/{_segment(customer_id)}"
        customer = await self.request("GET", path)
        if not isinstance(customer, dict):
            raise InvalidResponse(
                200, "invalid_customer", "the body is not an object", method="GET", path=path
            )
        return customer

    async def get_event(self, event_id: str) -> dict[str, Any]:
        """The event as VINR's Events API shows it (raw, as received). Raises `NotFound` if there is
        none (or it is older than VINR's 30 days)."""
        path = f"/events/{_segment(event_id)}"
        event = await self.request("GET", path)
        if not isinstance(event, dict) or not isinstance(event.get("id"), str):
            raise InvalidResponse(200, "invalid_event", "the body is not an event", method="GET", path=path)
        return event

    # --- making things happen (the development loop: `vinr-recon sandbox trigger`) ---
    # Raw dicts: what VINR answered, for the caller to print. A POST is not retried once it
    # may have reached VINR (see `request`), so a step is never done twice.

    async def create_customer(self, **fields: Any) -> dict[str, Any]:
        return await self._post("/customers", fields)

    async def create_invoice(self, **fields: Any) -> dict[str, Any]:
        return await self._post("/invoices", fields)

    async def add_invoice_line(self, invoice_id: str, **fields: Any) -> dict[str, Any]:
        return await self._post(f"/invoices/{_segment(invoice_id)}/lines", fields)

    async def invoice_action(self, invoice_id: str, action: str, **fields: Any) -> dict[str, Any]:
        """`POST /invoices/{id}/{action}`: `finalize`, `send`, `void`, `mark_uncollectible`, or
        `pay` (the sandbox's, with `card=...`); a declined card is an `InvalidRequest` with status 402."""
        if action not in ("finalize", "send", "void", "mark_uncollectible", "pay"):
            raise ValueError(f"not an invoice action: {action!r}")
        return await self._post(f"/invoices/{_segment(invoice_id)}/{action}", fields or None)

    async def _post(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        answer = await self.request("POST", path, json=body)
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            raise InvalidResponse(200, "invalid_object", "the body is not an object with an id", method="POST",
                                  path=path)
        return answer

    # --- lists, paged lazily ---

    async def iter_invoices(
        self, created_gte: int | datetime | None = None, status: str | None = None, limit: int = MAX_PAGE_SIZE
    ) -> AsyncGenerator[Invoice, None]:
        """Every invoice matching the filters, oldest first, fetching a page only when it is needed."""
        params = {"created[gte]": _unix(created_gte), "status": status}
        async for item in self._paginate("/invoices", params, limit):
            yield _invoice(item, "/invoices")

    async def iter_invoice_answers(
        self, created_gte: int | datetime | None = None, status: str | None = None, limit: int = MAX_PAGE_SIZE
    ) -> AsyncGenerator[Invoice | Unreadable, None]:
        """As `iter_invoices`, but an item that breaks the contract comes as `Unreadable` instead of
        ending the list: one malformed invoice must not stop every run at the same page."""
        params = {"created[gte]": _unix(created_gte), "status": status}
        async for item in self._paginate("/invoices", params, limit):
            try:
                yield _invoice(item, "/invoices")
            except InvalidResponse as exc:
                created = item.get("created")
                yield Unreadable(item["id"], exc.message or str(exc), created if type(created) is int else None)

    async def iter_events(
        self, created_gte: int | datetime | None = None, type: str | None = None, limit: int = MAX_PAGE_SIZE
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Every event matching the filters (VINR keeps 30 days), oldest first, as received.

        Raw dicts, each with a string `id`: the caller stores what VINR sent and parses it with
        `vinr.events.parse_event`, so one unreadable event does not end the whole list.
        """
        params = {"created[gte]": _unix(created_gte), "type": type}
        async for item in self._paginate("/events", params, limit):
            yield item

    async def _paginate(
        self, path: str, filters: dict[str, Any], limit: int
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The raw items of a list, one page in memory at a time, following `starting_after`."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        params = {key: value for key, value in filters.items() if value is not None}
        params["limit"] = limit
        while True:
            page = await self.request("GET", path, params=params)
            items, has_more = _list_page(page, path)
            for item in items:
                yield item
            # An empty page that claims more would otherwise loop forever on the same cursor.
            if not has_more or not items:
                return
            params = {**params, "starting_after": items[-1]["id"]}


def _segment(object_id: str) -> str:
    """An id as one path segment: `inv/../x` must not reach another route."""
    if not object_id:
        raise ValueError("an id must not be empty")
    return quote(object_id, safe="")


def _unix(value: int | datetime | None) -> int | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("created_gte must be timezone-aware (or Unix seconds)")
        return int(value.timestamp())
    return value


def _list_page(page: Any, path: str) -> tuple[list[dict[str, Any]], bool]:
    """`data` and `hasMore` of a list answer, checked enough to page safely."""
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        raise InvalidResponse(200, "invalid_list", "the body is not a list object", method="GET", path=path)
    items = page["data"]
    if not all(isinstance(item, dict) and isinstance(item.get("id"), str) for item in items):
        raise InvalidResponse(200, "invalid_list", "a list item has no string id", method="GET", path=path)
    return items, page.get("hasMore", page.get("has_more")) is True


@dataclass(frozen=True)
class Unreadable:
    """An invoice VINR listed that breaks the contract: its id and what is wrong with it."""

    id: str
    error: str
    created: int | None = None


def _invoice(item: Any, path: str) -> Invoice:
    """The invoice VINR sent; one that breaks the contract is an `InvalidResponse`, not a crash."""
    try:
        return Invoice.model_validate(item)
    except ValidationError as exc:
        detail = describe_errors(exc)
    object_id = item.get("id") if isinstance(item, dict) else None
    message = f"{object_id or 'object'}: {detail}"
    raise InvalidResponse(200, "invalid_object", message, method="GET", path=path)
