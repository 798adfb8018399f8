"""Fuzzing the webhook receiver: `vinr-recon serve` as a real process, real HTTP, the real Redis.

Hypothesis draws bodies (bytes, JSON, events, events with a byte changed), signature headers
(none, junk, signed under the right or a wrong secret, stale or early, a byte changed, buried
among other `v1` and `v0` entries), content types and extra headers. Whatever arrives:

- the answer is 200, 400 or 413: never a 5xx (Redis is up, so not even a 503);
- a 200 only for a header that carries a `v1` the test itself computes as the HMAC of those
  exact bytes under the configured secret, within the tolerance, and only once the event is
  in Redis; every other answer leaves the queue as it was;
- a delivery signed properly, of a body that is an event, is accepted (so the fuzzing is not
  vacuous);
- the process is alive and answers /healthz afterwards, and its log holds no secret and no
  signature value.

Then the structured forgeries, and a 100 MB body against the process's peak RSS.

    FUZZ_EXAMPLES=10000 .venv/bin/python -m pytest tests/test_receiver_fuzz.py   # the full run

`FUZZ_EXAMPLES` defaults to 400 for CI.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from redis import Redis

from conftest import REDIS_URL, WEBHOOK_SECRET, unique
from receiver_support import free_port
from vinr.events import InvalidEvent, parse_event
from vinr_recon.jobs import event_job_id, job_key, result_key

RUN = unique("r")[-8:]  # see `events`

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "400"))
URL = "/webhooks/vinr"
TOLERANCE = 300
MARGIN = 5  # seconds kept away from the tolerance's edge, so a clock tick cannot flip an answer
MAX_BODY = 64 * 1024
OTHER_SECRET = "whsec_test_" + "j" * 24


# --- the receiver process -----------------------------------------------------------------


class Receiver:
    """`vinr-recon serve` on a free port, its settings from the environment, its log in a file."""

    def __init__(self, workdir: Path, **settings: str) -> None:
        """`settings`: more environment for the process, e.g. `RECEIVER_HEADER_TIMEOUT="1"`."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.queue = unique("arq:queue:fuzz")
        self.log_path = workdir / f"receiver-{self.port}.log"
        env = {
            **{k: v for k, v in os.environ.items()
               if not k.startswith(("VINR_", "LEDGER_", "DATABASE_", "REDIS_", "RECEIVER_"))},
            "VINR_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "VINR_WEBHOOK_TOLERANCE": str(TOLERANCE),
            "VINR_WEBHOOK_MAX_BODY": str(MAX_BODY),
            "REDIS_URL": REDIS_URL,
            "QUEUE_NAME": self.queue,
            "DATABASE_URL": f"sqlite:///{workdir / 'ledger.db'}",
            "LEDGER_API_TOKEN": "ledger-token-fuzz-" + "f" * 16,
            "LOG_LEVEL": "INFO",
            **settings,
        }
        command = [str(Path(sys.executable).with_name("vinr-recon")), "serve", "--port", str(self.port)]
        self.log = self.log_path.open("wb")
        # cwd: a folder of our own, so no developer's .env is read.
        self.process = subprocess.Popen(command, env=env, cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the receiver did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.05)

    def status(self, field: str) -> int:
        """A kB figure of /proc/<pid>/status: VmRSS now, VmHWM the peak so far."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))

    def reset_peak(self) -> None:
        """Make VmHWM start again from the present RSS (Linux: "5" to clear_refs)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)
        self.log.close()


@contextmanager
def running(process: Receiver) -> Iterator[Receiver]:
    """`process` for the block; then stopped, and its queue and the queue's jobs and results deleted."""
    redis = Redis.from_url(REDIS_URL)
    try:
        yield process
    finally:
        process.stop()
        ids = [member.decode() for member in redis.zrange(process.queue, 0, -1)]
        redis.delete(process.queue, *(k for i in ids for k in (job_key(i), result_key(i))))
        redis.close()


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    with running(Receiver(tmp_path_factory.mktemp("fuzz"))) as process:
        yield process


@pytest.fixture(scope="module")
def http(receiver):
    with httpx.Client(base_url=receiver.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def redis():
    client = Redis.from_url(REDIS_URL)
    yield client
    client.close()


# Every signature value sent, so the log check can look for each.
SENT: set[str] = set()


def mac(body: bytes, secret: str, t: int | str) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def authentic(body: bytes, header: str | None, now: float) -> bool:
    """The test's own reading of contract section 1: is some `v1` of `header` right for `body`?

    Deliberately loose about the header's syntax (the receiver may refuse more than this
    accepts, never less): any `t=` element whose value is a time within the tolerance, and
    any `v1=` element equal to the HMAC of the exact bytes under the configured secret.
    """
    if not header:
        return False
    elements = [e.strip().partition("=") for e in header.split(",")]
    times = [v.strip() for k, _, v in elements if k.strip() == "t"]
    signatures = {v.strip() for k, _, v in elements if k.strip() == "v1"}
    for t in times:
        if t.isascii() and t.isdigit() and abs(int(t) - now) <= TOLERANCE + MARGIN:
            if mac(body, WEBHOOK_SECRET, t) in signatures:
                return True
    return False


def is_event(body: bytes) -> str | None:
    try:
        return parse_event(body).id
    except InvalidEvent:
        return None


# --- what hypothesis draws ----------------------------------------------------------------

# Header values as h11 lets a client send them: visible latin-1, inner spaces and tabs.
_visible = st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f")
header_values = st.builds(
    lambda head, rest: (head + rest).rstrip(" \t"),
    _visible.map(str),
    st.text(st.one_of(_visible, st.sampled_from(" \t")), max_size=60),
)
# Framing and hop-by-hop headers would make the request another request; the rest is fair game.
_FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade", "te", "trailer",
            "keep-alive", "x-vinr-signature"}
header_names = st.from_regex(r"\A[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}\Z").filter(lambda n: n.lower() not in _FRAMING)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)

INVOICE_TYPES = ["invoice.created", "invoice.finalized", "invoice.paid", "invoice.payment_failed",
                 "invoice.voided", "invoice.marked_uncollectible", "invoice.updated"]


def sometimes(draw, usual, odd):
    """`usual` four times in five, else `odd`: most events are valid, enough are not."""
    return draw(odd) if draw(st.integers(0, 4)) == 0 else draw(usual)


@st.composite
def events(draw) -> bytes:
    """Event-shaped JSON, mostly valid, sometimes with a field missing or of the wrong type."""
    # Hypothesis draws the same uuids in every run, and job keys are global to a Redis: a per-run
    # part keeps two runs at once (or a run's leftovers) from looking like duplicates.
    fresh_id = st.uuids().map(lambda u: f"evt_{RUN}{u.hex[:16]}")
    invoice = st.fixed_dictionaries({
        "id": st.uuids().map(lambda u: f"inv_{u.hex[:12]}"), "object": st.just("invoice"),
        "status": st.sampled_from(["draft", "open", "paid", "void", "uncollectible", "gone"]),
        "total": st.integers(-10**6, 10**6), "amountPaid": st.integers(0, 10**6),
        "amountDue": st.integers(0, 10**6), "currency": st.sampled_from(["EUR", "usd", "EURO"]),
    })
    event = {
        "id": sometimes(draw, fresh_id, st.one_of(st.text(max_size=12), st.integers(), st.none())),
        "object": sometimes(draw, st.just("event"), st.sampled_from(["invoice", 1, None])),
        "type": sometimes(draw, st.sampled_from(INVOICE_TYPES), st.text(max_size=12)),
        "created": sometimes(draw, st.one_of(st.integers(0, 253_402_300_799), st.integers(-2**40, 2**40)), st.one_of(st.floats(allow_nan=False), st.text(max_size=4))),
        "livemode": draw(st.booleans()),
        "data": sometimes(draw, st.one_of(st.fixed_dictionaries({"object": invoice}), invoice),
                          st.one_of(st.dictionaries(st.text(max_size=8), json_values, max_size=3), json_values)),
    }
    if draw(st.integers(0, 9)) == 0:
        for key in draw(st.lists(st.sampled_from(list(event)), min_size=1, max_size=2, unique=True)):
            del event[key]
    text = json.dumps(event, indent=draw(st.sampled_from([None, 1])))
    return text.encode(draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16"])))


@st.composite
def one_byte_changed(draw, inner) -> bytes:
    body = bytearray(draw(inner))
    if body:
        position = draw(st.integers(0, len(body) - 1))
        body[position] ^= draw(st.integers(1, 255))
    return bytes(body)


bodies = st.one_of(
    events(),
    events(),
    one_byte_changed(events()),
    st.binary(max_size=512),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.just(b""),
)

# How the x-vinr-signature header is made; built at send time from the clock then.
SIGNATURES = ["absent", "junk", *["right"] * 4, "right_among_others", "other_secret", "stale", "early",
              "body_changed", "v0_only", "right_then_junk_element", "near_edge", "duplicate_headers"]


@st.composite
def deliveries(draw):
    return {
        "body": draw(bodies),
        "signature": draw(st.sampled_from(SIGNATURES)),
        "skew": draw(st.integers(-(TOLERANCE - MARGIN), TOLERANCE - MARGIN)),
        "beyond": draw(st.integers(TOLERANCE + MARGIN, 10**9)),
        "junk": draw(header_values),
        "decoys": draw(st.integers(0, 8)),
        "content_type": draw(st.one_of(st.sampled_from(["application/json", "text/plain", "application/json; "
                                                         "charset=utf-16"]), header_values, st.none())),
        "extra": draw(st.lists(st.tuples(header_names, header_values), max_size=4)),
        "space": draw(st.sampled_from(["", " ", "  "])),
    }


def signature_headers(d: dict, now: int) -> list[tuple[str, str]]:
    body, kind, sp = d["body"], d["signature"], d["space"]
    t = now + d["skew"]
    right = f"t={t},{sp}v1={mac(body, WEBHOOK_SECRET, t)}"
    decoys = [f"v1={hashlib.sha256(bytes([n])).hexdigest()}" for n in range(d["decoys"])]
    header = {
        "absent": None,
        "junk": d["junk"],
        "right": right,
        "right_among_others": ",".join([f"{sp}t={t}{sp}", *decoys, f"v0={mac(body, WEBHOOK_SECRET, t)}",
                                        f"v1={mac(body, OTHER_SECRET, t)}", f"v1={mac(body, WEBHOOK_SECRET, t)}"]),
        "other_secret": f"t={t},v1={mac(body, OTHER_SECRET, t)}",
        "stale": f"t={now - d['beyond']},v1={mac(body, WEBHOOK_SECRET, now - d['beyond'])}",
        "early": f"t={now + d['beyond']},v1={mac(body, WEBHOOK_SECRET, now + d['beyond'])}",
        "body_changed": f"t={t},v1={mac(body + b' ', WEBHOOK_SECRET, t)}",
        "v0_only": f"t={t},v0={mac(body, WEBHOOK_SECRET, t)}",
        "right_then_junk_element": f"{right},{d['junk']}",
        "near_edge": f"t={now - TOLERANCE - 2},v1={mac(body, WEBHOOK_SECRET, now - TOLERANCE - 2)}",
        "duplicate_headers": d["junk"],
    }[kind]
    headers = [] if header is None else [("x-vinr-signature", header.strip(" \t"))]  # as h11 sends it
    if kind == "duplicate_headers":
        headers.append(("x-vinr-signature", right))
    for _, value in headers:
        SENT.update(v for k, _, v in (e.strip().partition("=") for e in value.split(",")) if k == "v1")
    return headers


def queued(redis: Redis, receiver: Receiver) -> int:
    return redis.zcard(receiver.queue)


@pytest.mark.slow
def test_generated_deliveries_never_5xx_and_never_accept_a_forgery(receiver, http, redis):
    tally = {"accepted": 0, "refused": 0, "signed_events": 0}

    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(d=deliveries())
    def deliver(d):
        body = d["body"]
        now = int(time.time())
        headers = signature_headers(d, now)
        if d["content_type"] is not None:
            headers.append(("content-type", d["content_type"]))
        headers += d["extra"]
        before = queued(redis, receiver)
        response = http.post(URL, content=body, headers=[(k.encode(), v.encode("latin-1")) for k, v in headers])
        sent_at = time.time()

        assert response.status_code in (200, 400, 413), (response.status_code, response.text)
        event_id = is_event(body)
        signatures = [value for name, value in headers if name == "x-vinr-signature"]
        really_signed = any(authentic(body, value, sent_at) for value in signatures)
        if response.status_code == 200:
            assert response.json() == {"received": True}
            assert really_signed and event_id is not None, f"accepted a forgery: {headers!r}"
            assert redis.zscore(receiver.queue, event_job_id(receiver.queue, event_id)) is not None
            tally["accepted"] += 1
        else:
            assert queued(redis, receiver) == before
            assert response.headers["content-type"] == "application/json" and "error" in response.json()
            tally["refused"] += 1
        # The right signature, alone in its header and the only one, over an event: accepted.
        if d["signature"] in ("right", "right_among_others") and event_id is not None and len(body) <= MAX_BODY:
            tally["signed_events"] += 1
            assert response.status_code == 200, response.text

    deliver()
    assert receiver.process.poll() is None, "the receiver died"
    assert http.get("/healthz").status_code == 200
    print(f"\nfuzz: {EXAMPLES} examples asked, {tally}")  # noqa: T201 (shown with -s)
    if EXAMPLES >= 100:
        assert tally["accepted"] > 0 and tally["refused"] > 0


# --- structured forgeries -----------------------------------------------------------------


def event_bytes(event_id: str | None = None) -> bytes:
    return json.dumps({
        "id": event_id or unique("evt"), "object": "event", "type": "invoice.paid", "created": int(time.time()),
        "data": {"object": {"id": unique("inv"), "object": "invoice", "status": "paid", "total": 1200,
                            "amountPaid": 1200, "amountDue": 0, "currency": "EUR"}},
    }).encode()


def post(http, body, header: str | None, **extra) -> httpx.Response:
    headers = {"content-type": "application/json", **extra}
    if header is not None:
        headers["x-vinr-signature"] = header
        SENT.update(v for k, _, v in (e.strip().partition("=") for e in header.split(",")) if k == "v1")
    return http.post(URL, content=body, headers=headers)


def assert_refused(response: httpx.Response, reason: str, redis, receiver, before: int) -> None:
    assert (response.status_code, response.json()) == (400, {"error": reason})
    assert queued(redis, receiver) == before


@pytest.mark.parametrize("secret", [OTHER_SECRET, WEBHOOK_SECRET[:-1] + "j", WEBHOOK_SECRET.removeprefix("whsec_"),
                                    WEBHOOK_SECRET + " ", WEBHOOK_SECRET.upper(), ""],
                         ids=["another", "last char changed", "without the prefix", "trailing space", "upper case",
                              "empty"])
def test_a_valid_signature_under_another_secret_is_refused(receiver, http, redis, secret):
    body, now = event_bytes(), int(time.time())
    before = queued(redis, receiver)
    assert_refused(post(http, body, f"t={now},v1={mac(body, secret, now)}"), "no matching signature",
                   redis, receiver, before)


def test_a_replayed_delivery_is_refused_once_older_than_the_tolerance(receiver, http, redis):
    """A delivery captured and replayed: as sent (old t), or with a fresh t and the old v1."""
    body = event_bytes()
    then = int(time.time()) - TOLERANCE - 60
    captured = f"t={then},v1={mac(body, WEBHOOK_SECRET, then)}"
    before = queued(redis, receiver)
    assert_refused(post(http, body, captured), "timestamp too old", redis, receiver, before)
    retimed = f"t={int(time.time())},v1={mac(body, WEBHOOK_SECRET, then)}"
    assert_refused(post(http, body, retimed), "no matching signature", redis, receiver, before)
    assert post(http, body, f"t={then + 60},v1={mac(body, WEBHOOK_SECRET, then + 60)}").status_code == 200


def test_every_single_byte_change_of_a_signed_body_is_refused(receiver, http, redis):
    body, now = event_bytes(), int(time.time())
    header = f"t={now},v1={mac(body, WEBHOOK_SECRET, now)}"
    before = queued(redis, receiver)
    for position in range(len(body)):
        for flip in (0x01, 0x20):
            changed = bytearray(body)
            changed[position] ^= flip
            response = post(http, bytes(changed), header)
            assert (response.status_code, response.json()) == (400, {"error": "no matching signature"}), position
    assert queued(redis, receiver) == before
    assert post(http, body, header).status_code == 200  # the original still passes


@pytest.mark.parametrize("with_the_right_one", [False, True], ids=["forged", "right one last"])
def test_a_header_with_two_hundred_v1_entries(receiver, http, redis, with_the_right_one):
    """Two hundred wrong `v1` (about 14 kB of header, under the 16 KiB head cap): refused, quickly;
    with the right one among them, taken."""
    body, now = event_bytes(), int(time.time())
    entries = [f"v1={hashlib.sha256(str(n).encode()).hexdigest()}" for n in range(200)]
    if with_the_right_one:
        entries.append(f"v1={mac(body, WEBHOOK_SECRET, now)}")
    before = queued(redis, receiver)
    started = time.monotonic()
    response = post(http, body, ",".join([f"t={now}", *entries]))
    assert time.monotonic() - started < 2
    if with_the_right_one:
        assert response.status_code == 200 and queued(redis, receiver) == before + 1
    else:
        assert_refused(response, "no matching signature", redis, receiver, before)


def test_a_header_with_a_thousand_v1_entries_is_431_before_any_is_checked(receiver, http, redis):
    """About 68 kB of header: past the head cap (receiver.server), so no signature is computed."""
    body, now = event_bytes(), int(time.time())
    entries = [f"v1={hashlib.sha256(str(n).encode()).hexdigest()}" for n in range(1000)]
    entries.append(f"v1={mac(body, WEBHOOK_SECRET, now)}")
    before = queued(redis, receiver)
    try:
        status = post(http, body, ",".join([f"t={now}", *entries])).status_code
    except httpx.TransportError:
        status = None  # closed before the answer could be read: refused as well
    assert status in (431, None) and queued(redis, receiver) == before


@pytest.mark.slow
@pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content-length"])
def test_a_100_mb_body_is_413_without_the_process_holding_it(receiver, http, redis, declare_length):
    """Streamed from a generator; the receiver's peak RSS (VmHWM) grows by far less than 100 MB."""
    chunk, chunks = b"x" * 65536, 1600  # 100 MiB

    def upload():
        for _ in range(chunks):
            yield chunk

    headers = {"x-vinr-signature": "t=1,v1=00", "content-type": "application/json"}
    if declare_length:
        headers["content-length"] = str(len(chunk) * chunks)
    receiver.reset_peak()
    before, peak_before = queued(redis, receiver), receiver.status("VmHWM")
    try:
        response = http.post(URL, content=upload(), headers=headers)
    except httpx.TransportError:
        pytest.fail("the receiver dropped the connection instead of answering 413")
    grown = receiver.status("VmHWM") - peak_before
    assert response.status_code == 413 and response.json() == {"error": f"body over the limit of {MAX_BODY} bytes"}
    assert queued(redis, receiver) == before
    assert grown < 16 * 1024, f"the receiver's peak RSS grew by {grown / 1024:.1f} MiB while 100 MiB went by"


# --- slow clients and heads at the cap (receiver.server) ----------------------------------

MAX_HEAD = 16 * 1024  # RECEIVER_MAX_HEADER_BYTES, its default: request line and headers together
DEADLINE = 2.0  # RECEIVER_HEADER_TIMEOUT and RECEIVER_BODY_TIMEOUT of `slow_receiver`


@pytest.fixture(scope="module")
def slow_receiver(tmp_path_factory):
    """A receiver of its own whose head and body deadlines are short enough to wait for."""
    with running(Receiver(tmp_path_factory.mktemp("fuzz-slow"), RECEIVER_HEADER_TIMEOUT=str(DEADLINE),
                          RECEIVER_BODY_TIMEOUT=str(DEADLINE))) as process:
        yield process


def raw_delivery(body: bytes, *headers: tuple[str, str]) -> tuple[bytes, int]:
    """A signed delivery of `body` as bytes on the wire, and the length of its head."""
    now = int(time.time())
    signature = mac(body, WEBHOOK_SECRET, now)
    SENT.add(signature)
    lines = [f"POST {URL} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json",
             f"content-length: {len(body)}", f"x-vinr-signature: t={now},v1={signature}",
             *(f"{name}: {value}" for name, value in headers)]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body, len(head)


def status_of(sock: socket.socket) -> int | None:
    """The status of the answer on `sock`; None when it closes (or resets) first."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    return int(data.split()[1])


@hypothesis_settings(max_examples=max(EXAMPLES // 4, 20), deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(extra=st.lists(st.tuples(header_names, st.integers(0, 5000)), max_size=6),
       to_the_cap=st.one_of(st.none(), st.integers(-2, 2)))
def test_a_head_is_431_exactly_when_it_passes_the_cap(receiver, redis, extra, to_the_cap):
    """Drawn header fields, sometimes padded to within two bytes of the cap: 431 past it, else 200."""
    body = event_bytes()
    headers = [(name, "v" * size) for name, size in extra]
    raw, head = raw_delivery(body, *headers)
    if to_the_cap is not None and MAX_HEAD + to_the_cap - head - len("x-pad: \r\n") >= 0:
        raw, head = raw_delivery(body, *headers, ("x-pad", "p" * (MAX_HEAD + to_the_cap - head - 9)))
        assert head == MAX_HEAD + to_the_cap
    before = queued(redis, receiver)
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        sock.sendall(raw)
        status = status_of(sock)
    if head > MAX_HEAD:
        assert status in (431, None) and queued(redis, receiver) == before, (head, status)
    else:
        assert status == 200 and queued(redis, receiver) == before + 1, (head, status)


@hypothesis_settings(max_examples=max(EXAMPLES // 20, 10), deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.floats(0, 1), max_size=4), pauses=st.lists(st.floats(0, DEADLINE / 20), max_size=5))
def test_a_delivery_sent_in_pieces_within_the_deadlines_is_taken(slow_receiver, cuts, pauses):
    """Cut anywhere (inside the request line, a header, the blank line, the body), with pauses."""
    raw, _ = raw_delivery(event_bytes())
    points = sorted({0, *(int(cut * len(raw)) for cut in cuts), len(raw)})
    with socket.create_connection(("127.0.0.1", slow_receiver.port), timeout=10) as sock:
        for n, (start, end) in enumerate(zip(points, points[1:])):
            sock.sendall(raw[start:end])
            time.sleep(pauses[n] if n < len(pauses) else 0)
        assert status_of(sock) == 200


@hypothesis_settings(max_examples=max(EXAMPLES // 80, 3), deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=30))
def test_requests_cut_short_anywhere_are_closed_by_a_deadline_and_queue_nothing(slow_receiver, redis, cuts):
    """Each a prefix of a signed delivery, from nothing (an idle connection) to all but its last byte."""
    raw, _ = raw_delivery(event_bytes())
    before = queued(redis, slow_receiver)
    socks = [socket.create_connection(("127.0.0.1", slow_receiver.port), timeout=10) for _ in cuts]
    try:
        for sock, cut in zip(socks, cuts):
            sock.sendall(raw[:int(cut * len(raw))])
        received = {n: b"" for n in range(len(socks))}
        closed: set[int] = set()
        deadline = time.monotonic() + DEADLINE + 10
        with selectors.DefaultSelector() as selector:
            for n, sock in enumerate(socks):
                selector.register(sock, selectors.EVENT_READ, n)
            while len(closed) < len(socks) and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    try:
                        chunk = key.fileobj.recv(4096)
                    except OSError:
                        chunk = b""
                    received[key.data] += chunk
                    if not chunk:
                        closed.add(key.data)
                        selector.unregister(key.fileobj)
    finally:
        for sock in socks:
            sock.close()
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} of {len(socks)} cut-short requests still open"
    assert not any(data.startswith(b"HTTP/1.1 200") for data in received.values())
    assert queued(redis, slow_receiver) == before


# --- last: the process is alive, and its log of everything above tells no secret -----------


def test_the_receiver_is_alive_and_its_log_holds_no_secret_or_signature(receiver, http):
    assert receiver.process.poll() is None
    assert http.get("/healthz").json() == {"status": "ok"}
    log = receiver.log_path.read_text(errors="replace")
    assert "webhook signature rejected" in log  # it did log the rejections
    assert WEBHOOK_SECRET not in log and OTHER_SECRET not in log and "ledger-token-fuzz" not in log
    leaked = [value for value in SENT if len(value) >= 16 and value in log]
    assert not leaked, f"signature values in the log: {leaked[:3]}"
