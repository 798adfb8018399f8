"""The development loop (issue 21): `vinr-recon sandbox trigger` makes VINR emit an event, the
sandbox prints each delivery and its answer, the receiver logs it, and `vinr-recon events resend`
delivers an event again, signed, from VINR's Events API.

The loop runs as a new user runs it: `vinr-recon sandbox --webhook-url ...`, `vinr-recon serve`
and `vinr-recon worker` as processes on loopback (the real Redis, a queue of the module's own, a
SQLite ledger), and each command a subprocess; the ledger is read through the receiver's `/api`.
The scenarios and the delivery log's wording are also checked in-process, over real HTTP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conftest import API_TOKEN, REDIS_URL, WEBHOOK_SECRET, unique
from port_support import free_port
from test_e2e import Parts, drop_keys, ready, sandbox_url, wait_until
from vinr import delivery_log
from vinr.client import VinrClient
from vinr.sandbox.app import create_app
from vinr.sandbox.config import EndpointConfig, SandboxConfig
from vinr.sandbox.scenarios import NAMES
from vinr.sandbox.serving import serve
from vinr.sandbox.trigger import trigger
from vinr_recon.demo.processes import Child, vinr_recon
from vinr_recon.events_commands import DEFAULT_TARGET, delivery_body, target_url
from vinr_recon.settings import ConfigurationError

KEY = "vinr_test_" + "l" * 32


# --- the loop through real processes -----------------------------------------------------------


class Loop:
    def __init__(self, parts: Parts, env: dict[str, str], receiver: str, base: str, sandbox_out):
        self.parts, self.env, self.receiver, self.base, self.sandbox_out = parts, env, receiver, base, sandbox_out
        self.hook = f"{receiver}/webhooks/vinr"

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`vinr-recon <args>` to its end, as a person types it."""
        return subprocess.run([sys.executable, "-m", "vinr_recon", *args], env={**self.env, **(env or {})},
                              cwd=self.parts.folder, capture_output=True, text=True, timeout=60)

    def ledger(self, invoice_id: str) -> dict | None:
        answer = httpx.get(f"{self.receiver}/api/invoices/{invoice_id}", timeout=10,
                           headers={"Authorization": f"Bearer {API_TOKEN}"})
        return answer.json() if answer.status_code == 200 else None

    def printed(self) -> str:
        return self.sandbox_out.read_text(errors="replace")

    def receiver_log(self) -> list[dict]:
        text = (self.parts.folder / "receiver.log").read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    folder = tmp_path_factory.mktemp("devloop")
    queue = unique("arq:queue:devloop")
    receiver, sandbox_port = f"http://127.0.0.1:{free_port()}", free_port()
    base = f"http://127.0.0.1:{sandbox_port}/v1"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VINR_", "LEDGER_", "SMTP_", "ALERT_", "FULFIL", "PUBLIC_", "LOG_"))}
    env.update(VINR_WEBHOOK_SECRET=WEBHOOK_SECRET, VINR_API_KEY=KEY, VINR_API_BASE=base, LEDGER_API_TOKEN=API_TOKEN,
               REDIS_URL=REDIS_URL, QUEUE_NAME=queue, DATABASE_URL=f"sqlite:///{folder / 'ledger.db'}")
    migrate = subprocess.run([sys.executable, "-m", "vinr_recon", "db", "upgrade"], env=env, cwd=folder,
                             capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 0, migrate.stderr
    parts = Parts(folder, env)
    sandbox_out = folder / "sandbox-stdout.log"  # a *.log: searched for secrets with the others
    try:
        # The sandbox's stdout (its delivery log) apart from its stderr; retries come quickly.
        with open(sandbox_out, "wb") as out, open(folder / "sandbox.log", "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "vinr_recon", "sandbox", "--port", str(sandbox_port), "--rate-limit", "0",
                 "--time-scale", "0.001", "--webhook-url", f"{receiver}/webhooks/vinr"],
                env=env, cwd=folder, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        parts.children.append(Child("sandbox", process, folder / "sandbox.log"))
        # DEBUG: the receiver's one line per accepted delivery (accepted deliveries log at DEBUG).
        parts.env = {**env, "LOG_LEVEL": "DEBUG"}
        parts.start("receiver", vinr_recon("serve", "--port", receiver.rsplit(":", 1)[1]))
        parts.env = env
        worker_log = parts.start("worker", vinr_recon("worker")).log
        wait_until(lambda: sandbox_url(sandbox_out) == base, "the sandbox did not print its URL", parts)
        wait_until(lambda: ready(f"{receiver}/readyz"), "the receiver was not ready", parts, timeout=30)
        wait_until(lambda: "worker started" in worker_log.read_text(errors="replace"), "the worker did not start",
                   parts, timeout=30)
        yield Loop(parts, env, receiver, base, sandbox_out)
    finally:
        parts.stop_all()
        drop_keys(queue, None)


def triggered(loop: Loop, event_type: str) -> tuple[str, dict[str, str]]:
    """`vinr-recon sandbox trigger EVENT_TYPE`: the invoice and its events ({id: type}) it printed."""
    done = loop.run("sandbox", "trigger", event_type)
    assert done.returncode == 0, done.stdout + done.stderr
    invoice_id = re.search(r"events of (inv_\w+)", done.stdout).group(1)
    events = dict(re.findall(r"^  (evt_\w+) (\S+)$", done.stdout, re.M))
    return invoice_id, events


def delivered_ok(loop: Loop, event_id: str, event_type: str) -> bool:
    """The sandbox printed this event's delivery to the receiver and its 200."""
    pattern = rf"^--> {event_id} {re.escape(event_type)} {re.escape(loop.hook)}\b.*\n<-- 200 in \d+ ms$"
    return re.search(pattern, loop.printed(), re.M) is not None


@pytest.mark.slow
def test_trigger_payment_failed_reaches_the_ledger_and_both_sides_log_the_delivery(loop):
    invoice_id, events = triggered(loop, "invoice.payment_failed")
    assert sorted(events.values()) == sorted(
        ["invoice.created", "invoice.finalized", "invoice.sent", "invoice.payment_failed"])
    failed = next(e for e, kind in events.items() if kind == "invoice.payment_failed")

    # The receiver got it and the worker applied it: an open invoice with one failed attempt.
    view = wait_until(lambda: (v := loop.ledger(invoice_id)) and "invoice.payment_failed" in
                      [e["type"] for e in v["events"]] and v, "the ledger did not show the failed payment", loop.parts)
    assert (view["status"], view["attemptCount"], view["amountDue"]) == ("open", 1, 12000)
    assert failed in [e["id"] for e in view["events"]]

    # The sandbox printed every delivery and its answer.
    wait_until(lambda: all(delivered_ok(loop, e, kind) for e, kind in events.items()),
               "the sandbox did not print each delivery and its 200", loop.parts)
    # The receiver logged one line for the delivery: the event, the status, the milliseconds.
    lines = [r for r in loop.receiver_log() if r.get("event_id") == failed and r["event"] == "webhook accepted"]
    assert len(lines) == 1 and lines[0]["status"] == 200 and lines[0]["ms"] >= 0
    assert lines[0]["event_type"] == "invoice.payment_failed"


@pytest.mark.slow
def test_resend_delivers_an_event_again_which_the_receiver_takes_as_a_duplicate(loop):
    invoice_id, events = triggered(loop, "invoice.paid")
    paid = next(e for e, kind in events.items() if kind == "invoice.paid")
    wait_until(lambda: (v := loop.ledger(invoice_id)) and v["status"] == "paid", "the invoice was not paid",
               loop.parts)
    before = loop.ledger(invoice_id)

    done = loop.run("events", "resend", paid, "--to", loop.hook)

    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(rf"--> {paid} invoice\.paid {re.escape(loop.hook)}\n<-- 200 in \d+ ms\n", done.stdout)
    duplicate = [r for r in loop.receiver_log() if r.get("event_id") == paid and r["event"] == "webhook duplicate"]
    assert len(duplicate) == 1 and duplicate[0]["status"] == 200
    # Nothing posts twice: once a later invoice is in the ledger, this one is as it was.
    later, _ = triggered(loop, "invoice.finalized")
    wait_until(lambda: loop.ledger(later), "the later invoice did not arrive", loop.parts)
    after = loop.ledger(invoice_id)
    assert after["entries"] == before["entries"] and after["events"] == before["events"]
    assert [e["id"] for e in after["events"]].count(paid) == 1


@pytest.mark.slow
def test_resend_signed_with_another_secret_shows_the_receivers_400_and_fails(loop):
    _, events = triggered(loop, "invoice.created")
    (created,) = events

    done = loop.run("events", "resend", created, "--to", loop.hook,
                    env={"VINR_WEBHOOK_SECRET": "whsec_not_the_receivers_" + "x" * 20})

    assert done.returncode == 1
    assert re.fullmatch(rf"--> {created} invoice\.created \S+\n<-- 400 in \d+ ms: no matching signature\n",
                        done.stdout)


@pytest.mark.slow
def test_resend_of_an_event_vinr_does_not_have_is_one_line_and_fails(loop):
    done = loop.run("events", "resend", "evt_unknown", "--to", loop.hook)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "vinr-recon events resend: VINR has no event evt_unknown (404; it keeps events 30 days)"]


@pytest.mark.slow
@pytest.mark.parametrize("override, says", [
    ({"VINR_API_KEY": "vinr_test_" + "w" * 32}, "VINR refused the key (401) at "),
    ({"VINR_API_BASE": "{root}"}, "VINR answered 404 to POST /customers at {root}: the base URL usually ends in /v1"),
    ({"VINR_API_BASE": "http://127.0.0.1:9/v1"}, "VINR did not answer at http://127.0.0.1:9/v1 (POST /customers): "),
])
def test_trigger_refused_or_unanswered_is_one_line_and_fails(loop, override, says):
    root = loop.base.removesuffix("/v1")
    done = loop.run("sandbox", "trigger", "invoice.paid", env={k: v.format(root=root) for k, v in override.items()})
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("vinr-recon sandbox trigger: " + says.format(root=root)), line


def test_trigger_without_a_key_names_the_setting_and_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VINR_")}
    done = subprocess.run([sys.executable, "-m", "vinr_recon", "sandbox", "trigger", "invoice.paid"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "VINR_API_KEY must be set" in done.stderr
    assert len(done.stderr.splitlines()) == 1


# --- every scenario, in-process over real HTTP ---------------------------------------------------

EXPECTED = {
    "invoice.created": ["invoice.created"],
    "invoice.finalized": ["invoice.created", "invoice.finalized"],
    "invoice.sent": ["invoice.created", "invoice.finalized", "invoice.sent"],
    "invoice.paid": ["invoice.created", "invoice.finalized", "invoice.sent", "invoice.paid"],
    "invoice.payment_failed": ["invoice.created", "invoice.finalized", "invoice.sent", "invoice.payment_failed"],
    "invoice.updated": ["invoice.created", "invoice.finalized", "invoice.sent", "invoice.updated"],
    "invoice.voided": ["invoice.created", "invoice.finalized", "invoice.sent", "invoice.voided"],
    "invoice.marked_uncollectible": ["invoice.created", "invoice.finalized", "invoice.sent",
                                     "invoice.marked_uncollectible"],
    "3d_secure": ["invoice.created", "invoice.finalized", "invoice.sent", "invoice.payment_failed", "invoice.paid"],
}


async def test_each_scenario_makes_vinr_emit_its_event_through_public_routes_only():
    assert set(NAMES) == set(EXPECTED)
    app = create_app(SandboxConfig(api_keys=(KEY,)))  # VINR's sandbox rate limit (25/s) on
    sandbox = app.state.sandbox
    async with serve(app) as root, VinrClient(root + "/v1", KEY) as client:
        for name, types in EXPECTED.items():
            outcome = await trigger(client, name)
            assert [kind for _, kind in outcome.events] == types, name
            invoice = sandbox.state.invoice(outcome.invoice_id)
            assert [e.id for e in sandbox.state.events if e.snapshot.id == invoice.id] == \
                [event_id for event_id, _ in outcome.events]
            final = {"invoice.paid": "paid", "3d_secure": "paid", "invoice.voided": "void",
                     "invoice.marked_uncollectible": "uncollectible", "invoice.created": "draft"}.get(name, "open")
            assert invoice.status == final, name
    threeds = sandbox.state.invoice(outcome.invoice_id)
    assert threeds.attempt_count == 2 and threeds.last_payment_error is None


async def test_the_sandbox_reports_each_attempt_with_its_answer_and_the_retry():
    answers = iter([503, 200])

    async def hook(request: Request) -> Response:
        await request.body()
        return JSONResponse({}, status_code=next(answers))

    reports = []
    async with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as receiver:
        config = SandboxConfig(api_keys=(KEY,), rate_limit=0, time_scale=0.0001,
                               endpoints=(EndpointConfig(receiver + "/hook", ("whsec_x" * 4,)),))
        app = create_app(config)
        app.state.sandbox.deliverer.on_attempt = reports.append
        async with serve(app) as root, VinrClient(root + "/v1", KEY) as client:
            customer = await client.create_customer(email="a@example.test")
            invoice = await client.create_invoice(customer=customer["id"])
            await app.state.sandbox.deliveries_idle(10)
    (event,) = app.state.sandbox.state.events  # invoice.created, delivered twice
    assert [(r.event_id, r.event_type, r.status, r.attempt) for r in reports] == [
        (event.id, "invoice.created", 503, 1), (event.id, "invoice.created", 200, 2)]
    assert event.snapshot.id == invoice["id"]
    first, second = reports
    assert first.retry_in == pytest.approx(0.006) and second.retry_in is None
    assert re.fullmatch(r"<-- 503 in \d+ ms, retry in 0\.006 s", delivery_log.answered(
        first.status, first.seconds, retry_in=first.retry_in))
    assert delivery_log.sent(second.event_id, second.event_type, second.url, second.attempt) == \
        f"--> {event.id} invoice.created {receiver}/hook (attempt 2)"


# --- the pure parts ------------------------------------------------------------------------------


def test_the_delivery_log_lines():
    assert delivery_log.sent("evt_1", "invoice.paid", "http://h/webhooks/vinr") == \
        "--> evt_1 invoice.paid http://h/webhooks/vinr"
    assert delivery_log.sent("evt_1", "invoice.paid", "u", attempt=3, copy=1) == \
        "--> evt_1 invoice.paid u (attempt 3, duplicate 1)"
    assert delivery_log.answered(200, 0.0042) == "<-- 200 in 4 ms"
    assert delivery_log.answered(200, 0.0042, retry_in=30) == "<-- 200 in 4 ms"  # delivered: no retry
    assert delivery_log.answered(503, 0.002, retry_in=30) == "<-- 503 in 2 ms, retry in 30 s"
    assert delivery_log.answered(None, 0.001, error="ConnectError", retry_in=1920) == \
        "<-- ConnectError after 1 ms, retry in 32 min"
    assert delivery_log.answered(500, 0.01, attempts=13) == "<-- 500 in 10 ms, given up after 13 attempts"
    assert delivery_log.answered(400, 0.003, reason="no matching signature") == \
        "<-- 400 in 3 ms: no matching signature"
    assert delivery_log.duration(61440) == "17.1 h"


def test_resend_target_and_body():
    assert target_url(None, None) == DEFAULT_TARGET == "http://127.0.0.1:8000/webhooks/vinr"
    assert target_url(None, "https://recon.example.com") == "https://recon.example.com/webhooks/vinr"
    assert target_url("http://127.0.0.1:9000/webhooks/vinr", "https://x.example") == \
        "http://127.0.0.1:9000/webhooks/vinr"
    with pytest.raises(ConfigurationError, match="--to must be an http"):
        target_url("127.0.0.1:8000", None)
    event = {"id": "evt_1", "object": "event", "type": "invoice.paid", "created": 1, "livemode": False,
             "data": {"object": {"id": "inv_1", "total": 5}}, "deliveryAttempts": [{"status": 503}]}
    assert json.loads(delivery_body(event)) == {k: v for k, v in event.items() if k != "deliveryAttempts"}
    assert b" " not in delivery_body(event)  # compact, as VINR sends
