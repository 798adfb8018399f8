"""Slow and hostile clients at the socket, against `vinr-recon serve` as a real process.

Raw sockets, so that each test says exactly which bytes arrive and when: an oversized head is
431 without being read whole; an idle connection, a half request line, trickled headers and a
stalled body are closed by their deadline (a short one, set through the settings); one
connection past the bound is refused as it is accepted; stalled bodies hold no more memory
than the body budget, and a signed delivery still gets its 200 while they are held.
How fast, and at 500 connections, is `bench/slowclients.py`'s to say.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx
import pytest
from redis import Redis

from conftest import REDIS_URL
from receiver.limits import BodyBudget
from receiver_support import event_body, signed
from test_receiver_fuzz import Receiver
from vinr_recon.jobs import job_key, result_key

URL = "/webhooks/vinr"
DEADLINE = 1.0  # RECEIVER_HEADER_TIMEOUT and RECEIVER_BODY_TIMEOUT of the receivers here
WAIT = 10.0  # how long a test waits for what should happen after DEADLINE, on a busy machine
MAX_HEAD = 16 * 1024
MIB = 1024 * 1024

LIMITS = {"RECEIVER_HEADER_TIMEOUT": str(DEADLINE), "RECEIVER_BODY_TIMEOUT": str(DEADLINE),
          "VINR_WEBHOOK_MAX_BODY": str(MIB)}


def start(tmp_path_factory, **settings: str) -> Receiver:
    return Receiver(tmp_path_factory.mktemp("slow"), **{**LIMITS, **settings})


def stop(receiver: Receiver) -> None:
    receiver.stop()
    redis = Redis.from_url(REDIS_URL)
    ids = [member.decode() for member in redis.zrange(receiver.queue, 0, -1)]
    redis.delete(receiver.queue, *(k for i in ids for k in (job_key(i), result_key(i))))
    redis.close()


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    process = start(tmp_path_factory)
    yield process
    stop(process)


@pytest.fixture
def receiver_with(tmp_path_factory):
    """A receiver of the test's own, with more settings: `receiver_with(RECEIVER_MAX_CONNECTIONS="10")`."""
    started: list[Receiver] = []

    def make(**settings: str) -> Receiver:
        started.append(start(tmp_path_factory, **settings))
        return started[-1]

    yield make
    for process in started:
        stop(process)


def request_head(*headers: str, length: int | None = None) -> bytes:
    lines = [f"POST {URL} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json", *headers]
    if length is not None:
        lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def signed_request(body: bytes | None = None, *headers: str) -> bytes:
    body = body or event_body()
    return request_head(f"x-vinr-signature: {signed(body)['x-vinr-signature']}", *headers, length=len(body)) + body


class Client:
    """One raw connection to the receiver; every one is closed after its test (`_close_clients`)."""

    opened: list[Client] = []

    @classmethod
    async def open(cls, receiver: Receiver) -> Client:
        client = cls()
        client.reader, client.writer = await asyncio.open_connection("127.0.0.1", receiver.port)
        cls.opened.append(client)
        return client

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def status(self, timeout: float = WAIT) -> int | None:
        """The status of the next answer; None if the connection closes first."""
        try:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
        except ConnectionError:
            return None
        if not line:
            return None
        status = int(line.split()[1])
        length = 0
        while (header := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = header.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        self.body = await self.reader.readexactly(length)
        return status

    async def closed_within(self, seconds: float) -> bool:
        """Whether the server closes the connection within `seconds` (whatever it answers first)."""
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                if not await asyncio.wait_for(self.reader.read(65536), deadline - time.monotonic()):
                    return True
        except ConnectionError:
            return True
        except asyncio.TimeoutError:
            return False
        return False

    def close(self) -> None:
        self.writer.transport.abort()
        self.writer.close()


@pytest.fixture(autouse=True)
async def _close_clients():
    yield
    while Client.opened:
        Client.opened.pop().close()
    await asyncio.sleep(0)  # let the transports finish closing in this test's loop


# --- the body budget, as pure logic (receiver.limits) --------------------------------------


def test_a_body_within_its_free_bytes_draws_nothing_from_the_budget():
    budget = BodyBudget(total=0, free=1000)
    held = budget.request()
    assert held.take(600) and held.take(400) and budget.used == 0
    assert not held.take(1)  # a 0-byte budget: one byte past the free ones is refused
    assert held.size == 1000


def test_bytes_past_the_free_ones_are_drawn_and_refused_once_the_budget_is_spent():
    budget = BodyBudget(total=1500, free=1000)
    first, second = budget.request(), budget.request()
    assert first.take(1800) and budget.used == 800
    assert second.take(1000) and budget.used == 800  # its free part
    assert not second.take(701) and (second.size, budget.used) == (1000, 800)  # refused: nothing taken
    assert second.take(700) and budget.used == 1500
    first.release()
    assert budget.used == 700 and first.size == 0
    first.release()  # idempotent
    second.release()
    assert budget.used == 0


# --- the head: a cap on the request line and headers together ------------------------------


async def test_a_signed_delivery_with_a_head_just_under_the_cap_is_taken(receiver):
    client = await Client.open(receiver)
    filler = "x-filler: " + "f" * (MAX_HEAD - 1024)
    await client.send(signed_request(None, filler))
    assert await client.status() == 200
    client.close()


@pytest.mark.parametrize("shape", ["one long field", "many short fields", "long request line",
                                   "after empty lines"])
async def test_a_head_over_16_kib_is_431_and_the_connection_closed(receiver, shape):
    """"After empty lines": the parser skips CRLFs before a request line, so their blank line is
    not the end of the head."""
    headers, path, before = [], URL, b""
    if shape == "one long field":
        headers = ["x-long: " + "a" * (MAX_HEAD + 1)]
    elif shape == "many short fields":
        headers = [f"x-short-{n}: {'b' * 40}" for n in range(MAX_HEAD // 40)]
    elif shape == "long request line":
        path = URL + "?" + "c" * (MAX_HEAD + 1)
    else:
        before, headers = b"\r\n" * 4, ["x-long: " + "a" * (MAX_HEAD + 1)]
    client = await Client.open(receiver)
    await client.send(before + signed_request(None, *headers).replace(URL.encode(), path.encode(), 1))
    assert await client.status() == 431
    assert json.loads(client.body) == {"error": f"request line and headers over the limit of {MAX_HEAD} bytes"}
    assert await client.closed_within(WAIT)


async def test_an_8_mb_signature_header_is_refused_without_being_read_whole(receiver):
    """Sent in 64 kB writes: the server answers or closes long before 8 MB, and its peak RSS barely moves."""
    receiver.reset_peak()
    peak_before = receiver.status("VmHWM")
    client = await Client.open(receiver)
    sent = 0
    try:
        await client.send(request_head()[:-2] + b"x-vinr-signature: t=1,v1=")
        while sent < 8 * MIB:
            await client.send(b"0" * 65536)
            sent += 65536
        await client.send(b"\r\n\r\n{}")
        status = await client.status()
    except ConnectionError:
        status = None
    grown = receiver.status("VmHWM") - peak_before
    assert status in (431, None) and await client.closed_within(WAIT)
    assert grown < 4 * 1024, f"the receiver's peak RSS grew by {grown / 1024:.1f} MiB for an 8 MB header"


# --- deadlines: for the head, from the connection's opening, and for the body --------------


async def test_an_idle_connection_is_closed_by_the_header_deadline(receiver):
    client = await Client.open(receiver)
    assert await client.closed_within(DEADLINE + WAIT), "an idle connection outlived the header deadline"


async def test_a_half_sent_request_line_is_closed_by_the_header_deadline(receiver):
    client = await Client.open(receiver)
    await client.send(b"POST /webhooks/vi")
    assert await client.closed_within(DEADLINE + WAIT)


async def test_trickled_headers_are_closed_by_the_header_deadline_however_often_a_byte_comes(receiver):
    client = await Client.open(receiver)
    await client.send(request_head()[:-2] + b"x-slow: ")
    started = time.monotonic()
    try:
        while time.monotonic() - started < DEADLINE + WAIT:
            await client.send(b"a")  # a byte every 0.1 s: never idle for long
            if await client.closed_within(0.1):
                return
    except ConnectionError:
        return
    pytest.fail("headers trickled a byte every 0.1 s kept the connection open past the header deadline")


async def test_a_stalled_body_is_closed_by_the_body_deadline(receiver):
    body = event_body()
    client = await Client.open(receiver)
    await client.send(signed_request(body)[:-len(body) // 2])
    assert await client.closed_within(DEADLINE + WAIT)


async def test_a_kept_alive_connection_has_a_header_deadline_for_its_next_request_too(receiver):
    client = await Client.open(receiver)
    await client.send(signed_request())
    assert await client.status() == 200
    await client.send(b"POST /webhooks/vinr HTTP/1.1\r\nhost: 127.0.0.1\r\n")
    assert await client.closed_within(DEADLINE + WAIT)


async def test_a_delivery_trickled_within_the_deadlines_is_taken(receiver):
    """The deadlines are for the whole head and the whole body, not a cut-off for slow but steady senders."""
    raw = signed_request()
    client = await Client.open(receiver)
    cut = raw.index(b"\r\n\r\n") + 4
    for piece in (raw[:cut // 2], raw[cut // 2:cut], raw[cut:cut + 100], raw[cut + 100:]):
        await client.send(piece)
        await asyncio.sleep(DEADLINE / 5)
    assert await client.status() == 200


# --- the bound on connections, and on the memory bodies take ------------------------------


async def test_a_connection_past_the_bound_is_refused_as_it_is_accepted(receiver_with):
    receiver = receiver_with(RECEIVER_MAX_CONNECTIONS="10", RECEIVER_HEADER_TIMEOUT="3")
    held = [await Client.open(receiver) for _ in range(10)]
    try:
        await asyncio.sleep(0.2)  # all ten accepted
        extra = await Client.open(receiver)
        assert await extra.status(timeout=DEADLINE) == 503, "the 11th connection was not refused at once"
        assert json.loads(extra.body) == {"error": "too many connections"}
        assert await extra.closed_within(WAIT)
    finally:
        for client in held:
            client.close()
    await asyncio.sleep(0.2)  # the ten are closed: room again
    client = await Client.open(receiver)
    await client.send(signed_request())
    assert await client.status() == 200


async def test_stalled_bodies_hold_no_more_than_the_budget_and_a_signed_delivery_still_passes(receiver_with):
    """50 connections each send all but the last byte of a 1 MiB - 1 body, then stall (a 4 MiB budget)."""
    receiver = receiver_with(RECEIVER_BODY_BUDGET=str(4 * MIB), RECEIVER_HEADER_TIMEOUT="5",
                             RECEIVER_BODY_TIMEOUT="5")
    receiver.reset_peak()
    peak_before = receiver.status("VmHWM")
    slow = [await Client.open(receiver) for _ in range(50)]
    try:
        for client in slow:
            client.writer.write(request_head(length=MIB - 1) + b"x" * (MIB - 2))
        await asyncio.gather(*(client.writer.drain() for client in slow))
        await asyncio.sleep(0.5)

        delivery = await Client.open(receiver)
        await delivery.send(signed_request())
        assert await delivery.status() == 200
        statuses = await asyncio.gather(*(client.status(timeout=0.5) for client in slow), return_exceptions=True)
        grown = receiver.status("VmHWM") - peak_before
    finally:
        for client in slow:
            client.close()
    refused = sum(status == 503 for status in statuses)
    answers = Counter(status if isinstance(status, int | None) else type(status).__name__ for status in statuses)
    assert refused >= 40, f"only {refused} of 50 stalled bodies were refused past the 4 MiB budget: {answers}"
    assert grown < 24 * 1024, f"the receiver's peak RSS grew by {grown / 1024:.1f} MiB under 50 stalled bodies"


async def test_a_signed_body_of_several_hundred_kb_is_taken_while_the_budget_has_room(receiver):
    padding = "p" * (300 * 1024)
    body = event_body().replace(b'"livemode"', f'"padding": "{padding}", "livemode"'.encode(), 1)
    client = await Client.open(receiver)
    await client.send(signed_request(body))
    assert await client.status() == 200


async def test_after_all_of_it_the_receiver_lives_and_answers(receiver):
    """(Its log is read for secrets and signatures by the suite-wide check, as every child's is.)"""
    assert receiver.process.poll() is None
    assert httpx.get(f"{receiver.url}/healthz", timeout=5).json() == {"status": "ok"}
    client = await Client.open(receiver)
    await client.send(signed_request())
    assert await client.status() == 200
