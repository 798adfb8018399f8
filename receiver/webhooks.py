"""POST /webhooks/vinr: read within the limit, verify, parse, queue, and only then say 200.

The one promise: a 2xx means the event is in Redis. Every other answer makes VINR retry, and
the job id is the event id, so a retried or duplicated delivery is a cheap no-op.

The endpoint is a plain ASGI app, called straight from the receiver app (receiver.app) without
Starlette's middleware and router: Request and Response wrappers and the middleware chain cost
about as much as the Redis round trip does once amortized, on the hottest path.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from typing import Annotated, Any, Literal, NamedTuple

import structlog
from pydantic import BaseModel, ConfigDict, Field, GetPydanticSchema, ValidationError, create_model
from starlette.types import Receive, Scope, Send

from receiver.enqueue import Enqueuer, QueueUnavailable, webhook_job
from receiver.limits import BodyBudget, Held
from receiver.metrics import UNKNOWN_TYPE, Metrics, type_label
from vinr.events import (
    INVOICE_EVENT_TYPES,
    INVOICE_KEYS,
    Event,
    Id,
    InvalidEvent,
    Timestamp,
    invoice_fields_problem,
    parse_event,
)
from vinr.signature import SignatureError, verify
from vinr_recon.jobs import KEPT_HEADERS
from vinr_recon.settings import Settings

log = structlog.get_logger("receiver.webhooks")
# A log line costs about as much as the rest of an accepted delivery, so accepted deliveries
# are logged at DEBUG only (the metrics count them always; LOG_LEVEL=DEBUG shows one line per
# delivery in a development loop); every rejection is logged. Each line has the event (when
# known), the status answered and the milliseconds taken. The request's context is bound
# (contextvars) only when there is something to log.
_debug_enabled = logging.getLogger("receiver.webhooks").isEnabledFor
_bind = structlog.contextvars.bind_contextvars

RETRY_AFTER = b"5"


class Received(BaseModel):
    """The 200's body: the event is in Redis (or already was)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    received: Literal[True] = True


RECEIVED = Received().model_dump_json().encode()  # b'{"received":true}', written once, not per request
_JSON = (b"content-type", b"application/json")
_RECEIVED_LENGTH = (b"content-length", str(len(RECEIVED)).encode())


class Answer(NamedTuple):
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


RECEIVED_ANSWER = Answer(200, RECEIVED)


def error(status: int, message: str, *headers: tuple[bytes, bytes]) -> Answer:
    return Answer(status, json.dumps({"error": message}).encode(), headers)


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class OverBudget(Exception):
    """The bodies in flight already hold the receiver's body budget (receiver.limits)."""


def headers_of(scope: Scope) -> dict[bytes, bytes]:
    """The request's raw headers by (ASGI: lowercase) name; values are decoded only when used."""
    return dict(scope["headers"])


def header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


_KEPT = [(name, name.encode()) for name in KEPT_HEADERS]


def kept_headers(headers: dict[bytes, bytes]) -> dict[str, str]:
    """The headers that travel with the job (vinr_recon.jobs.KEPT_HEADERS), as received."""
    return {name: headers[raw].decode("latin-1") for name, raw in _KEPT if raw in headers}


async def read_body(receive: Receive, declared: str | None, limit: int, held: Held | None = None) -> bytes:
    """The raw body, or `BodyTooLarge` as soon as it is known to exceed `limit` bytes, or
    `OverBudget` as soon as `held` (the request's share of the body budget) cannot take more.

    A declared Content-Length over the limit is refused before reading anything; otherwise the
    bytes are counted as they arrive, so an oversize body is never held whole.
    """
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        if held is not None and not held.take(len(chunk)):
            raise OverBudget
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _invoice_keys(name: str, **more: Any) -> type[BaseModel]:
    """A model of a JSON object that keeps only the invoice keys `parse_event` checks with the
    event (vinr.events.INVOICE_KEYS), each as it is: their types are the worker's to check."""
    keys: dict[str, Any] = {f"k{n}": (Any, Field(None, validation_alias=key)) for n, key in enumerate(INVOICE_KEYS)}
    return create_model(name, __config__=ConfigDict(extra="ignore"), **keys, **more)


# `Event.data` is any JSON object: in the older shape the invoice itself, in the newer one the
# invoice is its `object` (Event.data_object).
_ObjectKeys = _invoice_keys("_ObjectKeys")
_Data = _invoice_keys("_Data", object=(Annotated[_ObjectKeys | Any, Field(union_mode="left_to_right")], None))


def _invoice_fields(data: BaseModel) -> dict[str, Any]:
    """The checked keys of the event's invoice object that the body holds, by name."""
    nested = getattr(data, "object", None)
    keys = nested if isinstance(nested, _ObjectKeys) else data
    return {INVOICE_KEYS[int(name[1:])]: getattr(keys, name) for name in keys.model_fields_set if name != "object"}


class Envelope(BaseModel):
    """`vinr.events.Event`'s checks, field for field, without building `data` or extra fields.

    `Event.data` is `dict[str, Any]` and `Event` allows extra fields, so a body is an `Envelope`
    exactly when it is an `Event` (tests/test_receiver.py holds the two together); skipping the
    Python objects of the invoice halves the parse. Of the invoice, `data` keeps only the few
    fields `parse_event` checks with the event.
    """

    model_config = ConfigDict(extra="ignore")

    id: Id
    object: Literal["event"] = "event"
    type: Id
    created: Timestamp
    livemode: bool = False
    # A `_Data` (built above, so no static type names it): validated as such, in pydantic's core.
    data: Annotated[BaseModel, GetPydanticSchema(lambda _, handler: handler(_Data))]


def identify(body: bytes) -> tuple[str, str]:
    """The id and type of the event in `body`; `InvalidEvent` if the body is not an event.

    pydantic's own JSON parser checks the `Event` fields about twice as fast as `json.loads`
    and a validation pass (it builds only the few fields the receiver needs); a body it refuses
    goes to `parse_event`, which decides (the stdlib parser also takes a few things it does not,
    such as NaN) and words the error. The worker validates the whole event.
    """
    event: Envelope | Event
    try:
        event = Envelope.model_validate_json(body)
    except ValidationError:
        event = parse_event(body)
    else:
        if event.type in INVOICE_EVENT_TYPES and invoice_fields_problem(_invoice_fields(event.data)):
            event = parse_event(body)  # which refuses it, in its own words
    return event.id, event.type


def _ms_since(began: float) -> float:
    """Milliseconds since `began` (perf_counter), for the line logged about one delivery."""
    return round((time.perf_counter() - began) * 1000, 1)


# A random tag per process and a counter: unique ids without a uuid4 per request.
_PROCESS_TAG = os.urandom(4).hex()
_sequence = itertools.count(1)


def request_id_of(headers: dict[bytes, bytes]) -> str:
    """The caller's `x-request-id` when it is a sane token, else a fresh one."""
    given = headers.get(b"x-request-id", b"").decode("latin-1")
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return f"{_PROCESS_TAG}-{next(_sequence):x}"


class WebhookEndpoint:
    """The ASGI app of POST /webhooks/vinr for one receiver; settings are read once, here."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.secrets = settings.webhook_secrets
        self.tolerance = settings.vinr_webhook_tolerance
        self.limit = settings.vinr_webhook_max_body
        self.bodies = BodyBudget(settings.receiver_body_budget)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = headers_of(scope)
        request_id = request_id_of(headers)
        held = self.bodies.request()
        try:
            answer = await self.answer(scope["state"]["enqueuer"], headers, receive, request_id, held)
        finally:
            held.release()  # the body is no longer needed
        if answer is RECEIVED_ANSWER:
            length = _RECEIVED_LENGTH
        else:
            length = (b"content-length", str(len(answer.body)).encode())
        response_headers = [_JSON, length, (b"x-request-id", request_id.encode()), *answer.headers]
        await send({"type": "http.response.start", "status": answer.status, "headers": response_headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def answer(
        self, enqueuer: Enqueuer, headers: dict[bytes, bytes], receive: Receive, request_id: str,
        held: Held | None = None,
    ) -> Answer:
        """200 once the event is queued (or already was); 400, 413 or 503 otherwise."""
        received_at = time.time()
        began = time.perf_counter()
        metrics = self.metrics
        try:
            body = await read_body(receive, header(headers, b"content-length"), self.limit, held)
        except BodyTooLarge:
            metrics.delivered(UNKNOWN_TYPE, "too_large")
            _bind(request_id=request_id)
            log.warning("webhook body over the limit", limit=self.limit, status=413, ms=_ms_since(began))
            return error(413, f"body over the limit of {self.limit} bytes")
        except ClientGone:
            return error(400, "client disconnected")  # nobody is left to read it
        except OverBudget:  # slow clients hold the budget: refuse at once, VINR retries
            metrics.delivered(UNKNOWN_TYPE, "over_budget")
            _bind(request_id=request_id)
            log.warning("webhook body refused: the body budget is taken", budget=self.bodies.total, status=503,
                        ms=_ms_since(began))
            return error(503, "too many request bodies in flight", (b"retry-after", RETRY_AFTER))

        try:
            verify(body, header(headers, b"x-vinr-signature"), self.secrets, int(received_at), self.tolerance)
        except SignatureError as exc:
            reason = exc.reason.value
            metrics.verification_failures.labels(reason).inc()
            metrics.delivered(UNKNOWN_TYPE, "bad_signature")
            _bind(request_id=request_id)
            log.warning("webhook signature rejected", reason=reason, status=400, ms=_ms_since(began))
            return error(400, reason)

        try:
            event_id, event_type = identify(body)
        except InvalidEvent as exc:
            metrics.delivered(UNKNOWN_TYPE, "invalid")
            _bind(request_id=request_id)
            log.warning("webhook body is not an event", error=str(exc), status=400, ms=_ms_since(began))
            return error(400, f"not an event: {exc}")

        job = webhook_job(event_id, event_type, body, kept_headers(headers), received_at)
        started = time.perf_counter()
        try:
            created = await enqueuer.enqueue(job)  # answers within enqueue.DEADLINE (1.5 s)
        except QueueUnavailable as exc:
            metrics.enqueue_seconds.observe(time.perf_counter() - started)
            metrics.delivered(type_label(event_type), "unavailable")
            _bind(request_id=request_id, event_id=event_id, event_type=event_type)
            log.error("queue unavailable; VINR will retry", error=str(exc), status=503, ms=_ms_since(began))
            return error(503, "queue unavailable", (b"retry-after", RETRY_AFTER))
        metrics.enqueue_seconds.observe(time.perf_counter() - started)

        outcome = "accepted" if created else "duplicate"
        metrics.delivered(type_label(event_type), outcome)
        if _debug_enabled(logging.DEBUG):
            _bind(request_id=request_id, event_id=event_id, event_type=event_type)
            log.debug("webhook " + outcome, status=200, ms=_ms_since(began))
        return RECEIVED_ANSWER
