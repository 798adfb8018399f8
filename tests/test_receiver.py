"""POST /webhooks/vinr over real HTTP against the real Redis: 2xx only once the event is queued."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc

import httpx
import pytest
from arq.jobs import deserialize_job
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.asyncio import Redis
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from conftest import unique
from receiver.app import WEBHOOK_PATH, ReceiverApp, create_app
from receiver.webhooks import Envelope
from receiver_support import (  # noqa: F401 (client and private_redis are fixtures)
    assert_identify_agrees_with_parse_event,
    assert_no_secret_in,
    client,
    event_body,
    private_redis,
    queued_ids,
    served,
    signed,
)
from vinr.events import Event
from vinr.signature import Reason
from vinr_recon.jobformat import loads
from vinr_recon.jobs import APPLY_EVENT, event_job_id, job_key

URL = "/webhooks/vinr"
pytestmark = pytest.mark.usefixtures("logs")  # every test logs into the capture that the last inspects


async def assert_nothing_queued(redis, settings, body=None):
    assert await redis.zcard(settings.queue_name) == 0
    if body is not None:
        assert not await redis.exists(job_key(event_job_id(settings.queue_name, json.loads(body)["id"])))


# --- signatures -------------------------------------------------------------------------


def header_for(reason: Reason, body: bytes) -> dict[str, str]:
    if reason is Reason.MISSING_HEADER:
        return {}
    if reason is Reason.MALFORMED_HEADER:
        return {"x-vinr-signature": "this is not a signature"}
    if reason is Reason.NO_V1_SIGNATURE:
        return {"x-vinr-signature": f"t={int(time.time())},v0=deadbeef"}
    if reason is Reason.NO_MATCHING_SIGNATURE:
        return signed(body, secret="whsec_someone_else")
    if reason is Reason.TIMESTAMP_TOO_OLD:
        return signed(body, at=int(time.time()) - 301)
    if reason is Reason.TIMESTAMP_TOO_NEW:
        return signed(body, at=int(time.time()) + 301)
    raise AssertionError(reason)


@pytest.mark.parametrize("reason", list(Reason))
async def test_every_signature_failure_is_a_400_with_its_reason_and_nothing_queued(client, redis, settings, reason):
    body = event_body()
    response = await client.post(URL, content=body, headers=header_for(reason, body))
    assert response.status_code == 400
    assert response.json() == {"error": reason.value}
    await assert_nothing_queued(redis, settings, body)


async def test_a_body_changed_after_signing_is_rejected(client, redis, settings):
    body = event_body()
    response = await client.post(URL, content=body + b" ", headers=signed(body))
    assert (response.status_code, response.json()) == (400, {"error": "no matching signature"})
    await assert_nothing_queued(redis, settings)


async def test_the_rejection_is_logged_at_warning_with_the_request_id(client, logs):
    body = event_body()
    headers = {**signed(body, secret="whsec_someone_else"), "x-request-id": "req-signature-test"}
    response = await client.post(URL, content=body, headers=headers)
    assert response.headers["x-request-id"] == "req-signature-test"
    [line] = [line for line in logs.lines() if line.get("request_id") == "req-signature-test"]
    assert line["level"] == "warning" and line["reason"] == "no matching signature"


# --- accepted deliveries ----------------------------------------------------------------


async def test_a_valid_event_is_queued_once_then_answered_200(client, redis, settings):
    event_id = unique("evt")
    body = event_body(event_id)
    before_ms = int(time.time() * 1000)
    sent = {**signed(body), "x-request-id": "req-1"}
    response = await client.post(URL, content=body, headers=sent)

    assert (response.status_code, response.json()) == (200, {"received": True})
    job_id = event_job_id(settings.queue_name, event_id)
    assert await queued_ids(redis, settings) == [job_id]
    score = await redis.zscore(settings.queue_name, job_id)
    assert before_ms - 1000 <= score <= time.time() * 1000
    job = deserialize_job(await redis.get(job_key(job_id)), deserializer=loads)
    assert job.function == APPLY_EVENT and job.kwargs == {} and job.job_try is None
    assert job.enqueue_time.timestamp() * 1000 == pytest.approx(score, abs=1)
    job_event_id, event_type, raw, headers, received_at = job.args
    assert (job_event_id, event_type, raw) == (event_id, "invoice.paid", body)
    assert set(headers) == {"content-type", "user-agent", "x-vinr-signature", "x-request-id"}
    assert {name: headers[name] for name in sent} == sent  # exactly as received
    assert abs(received_at - time.time()) < 5
    assert await redis.ttl(job_key(job_id)) == -1  # an acknowledged event never expires unrun


async def test_header_names_are_case_insensitive(client, redis, settings):
    body = event_body()
    headers = {name.upper(): value for name, value in signed(body).items()}
    assert (await client.post(URL, content=body, headers=headers)).status_code == 200
    assert await redis.zcard(settings.queue_name) == 1


async def test_a_duplicate_delivery_gets_the_same_200_and_no_second_job(client, redis, settings):
    body = event_body()
    first = await client.post(URL, content=body, headers=signed(body))
    again = await client.post(URL, content=body, headers=signed(body))
    assert first.json() == again.json() == {"received": True}
    assert first.status_code == again.status_code == 200
    assert await redis.zcard(settings.queue_name) == 1


async def test_50_concurrent_deliveries_of_one_event_give_50_200s_and_one_job(client, redis, settings):
    event_id = unique("evt")
    body = event_body(event_id)
    responses = await asyncio.gather(*(client.post(URL, content=body, headers=signed(body)) for _ in range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    assert await queued_ids(redis, settings) == [event_job_id(settings.queue_name, event_id)]


async def test_unknown_event_types_are_queued_too(client, redis, settings):
    event_id = unique("evt")
    body = event_body(event_id, event_type="customer.created")
    assert (await client.post(URL, content=body, headers=signed(body))).status_code == 200
    job = await redis.get(job_key(event_job_id(settings.queue_name, event_id)))
    assert deserialize_job(job, deserializer=loads).args[1] == "customer.created"


# --- the fast path ------------------------------------------------------------------------


async def test_only_a_post_to_the_webhook_path_skips_starlettes_router():
    """POST /webhooks/vinr goes straight to its endpoint; another method, or a mount under a
    root_path, goes through Starlette as it would without the shortcut."""

    class Stub:
        def __init__(self, name: str) -> None:
            self.name = name

        async def __call__(self, scope, receive, send):
            await PlainTextResponse(self.name)(scope, receive, send)

    app = ReceiverApp(Stub("direct"), routes=[Route(WEBHOOK_PATH, Stub("routed"), methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://receiver") as client:
        assert (await client.post(WEBHOOK_PATH)).text == "direct"
        assert (await client.get(WEBHOOK_PATH)).status_code == 405
        assert (await client.post(WEBHOOK_PATH + "/")).status_code == 307  # Starlette redirects to the route
    mounted = httpx.ASGITransport(app, root_path="/vinr")
    async with httpx.AsyncClient(transport=mounted, base_url="http://receiver") as client:
        assert (await client.post("/vinr" + WEBHOOK_PATH)).text == "routed"


async def test_the_webhook_path_answers_405_to_other_methods(client, redis, settings):
    response = await client.get(URL)
    assert response.status_code == 405
    await assert_nothing_queued(redis, settings)


# --- bodies that are not events, or too large -------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b'{"id": "evt_1", "type": ', b"", b"[]", b'[{"id": "evt_1"}]', b'"evt_1"', b"null",
     b'{"object": "event", "type": "invoice.paid", "created": 1, "data": {}}',
     b'{"id": "", "object": "event", "type": "invoice.paid", "created": 1, "data": {}}'],
    ids=["malformed JSON", "empty", "empty array", "array", "string", "null", "no id", "empty id"],
)
async def test_a_signed_body_that_is_not_an_event_is_a_400(client, redis, settings, body):
    response = await client.post(URL, content=body, headers=signed(body))
    assert response.status_code == 400
    assert response.json()["error"].startswith("not an event")
    await assert_nothing_queued(redis, settings)


NAN_EVENT = b'{"id": "evt_nan", "object": "event", "type": "invoice.paid", "created": 1, "data": {"x": NaN}}'


@pytest.mark.parametrize(
    "body",
    [
        event_body("evt_same"),
        NAN_EVENT,
        b"\xef\xbb\xbf" + event_body("evt_bom"),
        event_body("evt_u16").decode().encode("utf-16"),
        b"",
        b"[]",
        b"{",
        b"\xff\xfe\x00",
        b'{"id": 1, "object": "event", "type": "x", "created": 1, "data": {}}',
        b'{"id": "evt_1", "object": "event", "type": "x", "created": 1.5, "data": {}}',
        b'{"id": "evt\t1", "object": "event", "type": "x", "created": 1, "data": {}}',
        b'{"id": "evt_1", "object": "event", "type": "x", "created": 1, "data": []}',
        b'{"id": "evt_1", "object": "event", "type": "x", "created": 1, "data": "inv_1"}',
        b'{"id": "evt_1", "object": "event", "type": "x", "created": 1}',
        b'{"id": "evt_1", "object": "invoice", "type": "x", "created": 1, "data": {}}',
        b'{"id": "evt_1", "type": "x", "created": 1, "livemode": "maybe", "data": {}}',
        b'{"id": "evt_1", "type": "x", "created": 1, "data": {"object": {"x": "\\ud800"}}, "more": [1, {}]}',
        b'{"id": "evt_1", "type": "x", "created": 1, "data": {"x": "\xed\xa0\x80"}}',
    ],
    ids=["event", "NaN", "BOM", "UTF-16", "empty", "array", "truncated", "not UTF-8", "int id", "float created",
         "raw tab in a string", "data an array", "data a string", "no data", "not an event object",
         "livemode not a bool", "lone surrogate escape", "surrogate bytes"],
)
def test_identify_accepts_and_refuses_exactly_what_parse_event_does(body):
    assert_identify_agrees_with_parse_event(body)


def drift(envelope: type[BaseModel], event: type[BaseModel]) -> list[str]:
    """How `envelope` reads a body otherwise than `event` does, `data`'s content aside (a JSON
    object either way; its content is the worker's to check): [] when both read the same fields
    by the same keys, with the same types, constraints, defaults, strictness and validators."""
    found = []
    if envelope.model_fields.keys() != event.model_fields.keys():
        found.append(f"fields: {sorted(envelope.model_fields)} against {sorted(event.model_fields)}")
    schemas = [model.model_json_schema(mode="validation") for model in (envelope, event)]
    read = [{key: schema for key, schema in s["properties"].items() if key != "data"} for s in schemas]
    if read[0] != read[1]:  # keyed by what is read from the body: an alias shows here
        found.append(f"keys and their schemas: {read[0]} against {read[1]}")
    if set(schemas[0]["required"]) != set(schemas[1]["required"]):
        found.append(f"required: {schemas[0]['required']} against {schemas[1]['required']}")
    if envelope.model_config.get("strict") != event.model_config.get("strict"):
        found.append("strictness")

    def validators(model: type[BaseModel]) -> set[tuple[tuple[str, ...], str]]:
        """(fields, mode) of each field validator (but of `data` alone), ((), mode) of a model's."""
        decorators = model.__pydantic_decorators__
        of_fields = {(tuple(f for f in d.info.fields if f != "data"), d.info.mode)
                     for d in decorators.field_validators.values()}
        return {v for v in of_fields if v[0]} | {((), d.info.mode) for d in decorators.model_validators.values()}

    if validators(envelope) != validators(event):
        found.append(f"validators: {validators(envelope)} against {validators(event)}")
    return found


def test_the_receiver_checks_every_field_of_the_event_model():
    """identify() checks `Event`'s top-level fields through a lighter model of its own."""
    assert Envelope.model_fields.keys() == Event.model_fields.keys()
    for name, field in Envelope.model_fields.items():
        if name != "data":  # a JSON object either way; its content is the worker's to check
            assert (field.annotation, field.default, field.metadata) == (
                Event.model_fields[name].annotation, Event.model_fields[name].default, Event.model_fields[name].metadata,
            ), name
    assert drift(Envelope, Event) == []


class _AliasDrift(Event):
    livemode: bool = Field(False, validation_alias="live")


class _ValidatorDrift(Event):
    @field_validator("type")
    @classmethod
    def _dotted(cls, value: str) -> str:
        return value


class _StrictDrift(Event):
    model_config = ConfigDict(strict=True)


@pytest.mark.parametrize("drifted", [_AliasDrift, _ValidatorDrift, _StrictDrift], ids=lambda m: m.__name__)
def test_an_event_model_that_drifted_from_the_envelope_is_noticed(drifted):
    """What the field-by-field comparison alone would miss: another key, a validator, strictness."""
    assert drift(Envelope, drifted) != []


async def test_a_declared_length_over_the_limit_is_refused_before_any_body_arrives(settings, redis):
    settings.vinr_webhook_max_body = 1024
    async with served(create_app(settings)) as client:
        reader, writer = await asyncio.open_connection(client.base_url.host, client.base_url.port)
        # Headers only: if the server waited for the body, no answer would come.
        writer.write(f"POST {URL} HTTP/1.1\r\nhost: x\r\ncontent-length: 1025\r\n\r\n".encode())
        status_line = await asyncio.wait_for(reader.readline(), 2)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 413")
        fits = event_body()
        assert len(fits) <= 1024
        assert (await client.post(URL, content=fits, headers=signed(fits))).status_code == 200
    assert await redis.zcard(settings.queue_name) == 1


@pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content-length"])
async def test_50_mb_over_a_1_mib_limit_is_413_without_holding_the_body(settings, redis, declare_length):
    settings.vinr_webhook_max_body = 1024 * 1024
    chunk, chunks = b"x" * 65536, 800  # 50 MiB, streamed

    async def upload():
        for _ in range(chunks):
            yield chunk

    headers = {"x-vinr-signature": "t=1,v1=00"}
    if declare_length:
        headers["content-length"] = str(len(chunk) * chunks)
    async with served(create_app(settings)) as client:
        tracemalloc.start()
        try:
            response = await client.post(URL, content=upload(), headers=headers)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert response.status_code == 413
    assert peak < 8 * 1024 * 1024, f"peak traced memory {peak / 2**20:.1f} MiB while 50 MiB went by"


# --- when Redis cannot take it ----------------------------------------------------------


async def test_redis_unreachable_is_a_503_with_retry_after_within_2_s(settings, redis):
    settings.redis_url = "redis://127.0.0.1:1/0"  # nothing listens there
    async with served(create_app(settings)) as client:
        body = event_body()
        started = time.monotonic()
        response = await client.post(URL, content=body, headers=signed(body))
        assert time.monotonic() - started < 2
    assert response.status_code == 503 and int(response.headers["retry-after"]) > 0
    assert response.json() == {"error": "queue unavailable"}


async def test_redis_down_then_back_loses_nothing_and_duplicates_nothing(settings, private_redis):
    settings.redis_url = private_redis.url
    event_id = unique("evt")
    body = event_body(event_id)
    async with served(create_app(settings)) as client:
        warm = event_body()
        assert (await client.post(URL, content=warm, headers=signed(warm))).status_code == 200

        private_redis.stop()
        started = time.monotonic()
        down = await client.post(URL, content=body, headers=signed(body))
        assert down.status_code == 503 and time.monotonic() - started < 2

        private_redis.start()  # empty, and without our script: NOSCRIPT, load, resend
        retried = await client.post(URL, content=body, headers=signed(body))
        again = await client.post(URL, content=body, headers=signed(body))
        assert retried.status_code == again.status_code == 200

    redis = Redis.from_url(private_redis.url)
    try:
        assert await queued_ids(redis, settings) == [event_job_id(settings.queue_name, event_id)]
    finally:
        await redis.aclose()


async def test_a_redis_that_never_answers_is_a_503_within_2_s(settings, black_hole_redis):
    settings.redis_url = black_hole_redis
    async with served(create_app(settings)) as client:
        body = event_body()
        started = time.monotonic()
        response = await client.post(URL, content=body, headers=signed(body))
        assert time.monotonic() - started < 2
        assert response.status_code == 503 and "retry-after" in response.headers


async def test_redis_out_of_memory_is_a_503_then_accepted_once_it_has_room(settings, private_redis):
    settings.redis_url = private_redis.url
    redis = Redis.from_url(private_redis.url)
    body = event_body()
    try:
        async with served(create_app(settings)) as client:
            await redis.config_set("maxmemory", 1)  # every write now fails with OOM (noeviction)
            full = await client.post(URL, content=body, headers=signed(body))
            assert full.status_code == 503
            await redis.config_set("maxmemory", 0)
            assert (await client.post(URL, content=body, headers=signed(body))).status_code == 200
        assert await redis.zcard(settings.queue_name) == 1
    finally:
        await redis.aclose()


# --- last: the logs of everything above -------------------------------------------------


def test_the_logs_of_this_file_hold_no_secret_and_no_signature(logs):
    text = logs.text()
    assert "webhook signature rejected" in text and "queue unavailable" in text  # it did capture
    assert_no_secret_in(text)
