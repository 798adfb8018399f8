"""End to end, as deployed: `vinr-recon sandbox`, `vinr-recon serve` and `vinr-recon worker` as
separate processes on loopback, the real Redis on 127.0.0.1:6379 (a queue name of the test's
own) and a SQLite ledger in tmp_path. The seed guide's flow is driven through the sandbox's API
over HTTP, and the ledger is read only through the receiver's `/api`."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis

from conftest import API_TOKEN, REDIS_URL, WEBHOOK_SECRET, unique
from port_support import free_port
from vinr_recon.demo.processes import Processes, vinr_recon

pytestmark = pytest.mark.slow

API_KEY = "vinr_test_" + "e" * 32
FIELDS = ("status", "currency", "total", "amountPaid", "amountDue")


class Parts(Processes):
    """`vinr-recon` processes, the demo's way: each in its own process group, its log in a file."""

    def logs(self) -> str:
        return "\n".join(f"--- {c.name}\n{c.log.read_text(errors='replace')[-3000:]}" for c in self.children)

    def assert_alive(self) -> None:
        dead = [(c.name, c.popen.returncode) for c in self.children if c.popen.poll() is not None]
        assert not dead, f"{dead}\n{self.logs()}"


def wait_until(check, what: str, parts: Parts, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        parts.assert_alive()
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s\n{parts.logs()}"
        time.sleep(0.05)


def sandbox_url(log: Path) -> str | None:
    found = re.search(r"VINR sandbox API: (\S+)", log.read_text(errors="replace"))
    return found.group(1) if found else None


def ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def drop_keys(queue: str, namespace: str | None) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        patterns = [f"{queue}*"] + ([f"arq:*{namespace}*"] if namespace else [])
        keys = [key for pattern in patterns for key in client.scan_iter(match=pattern, count=1000)]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def deployment(tmp_path):
    """(VINR API client, ledger /api client): the three parts running, the ledger migrated."""
    queue = unique("arq:queue:e2e")
    receiver, sandbox_port = f"http://127.0.0.1:{free_port()}", free_port()
    base = f"http://127.0.0.1:{sandbox_port}/v1"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VINR_", "LEDGER_", "SMTP_", "ALERT_", "FULFIL"))}
    env.update(VINR_WEBHOOK_SECRET=WEBHOOK_SECRET, VINR_API_KEY=API_KEY, LEDGER_API_TOKEN=API_TOKEN,
               VINR_API_BASE=base, REDIS_URL=REDIS_URL, QUEUE_NAME=queue, DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
               LOG_LEVEL="INFO")
    migrate = subprocess.run(vinr_recon("db", "upgrade"), env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
    assert migrate.returncode == 0, migrate.stderr
    parts = Parts(tmp_path, env)
    namespace = None
    try:
        # Bad days without drops: every event arrives, some twice, in any order; the ledger must
        # converge on VINR's state from the webhooks alone.
        sandbox_log = parts.start("sandbox", vinr_recon(
            "sandbox", "--port", str(sandbox_port), "--api-key", API_KEY,
            "--webhook-url", f"{receiver}/webhooks/vinr", "--webhook-secret", WEBHOOK_SECRET,
            "--rate-limit", "0", "--seed", "8", "--duplicate-rate", "0.5",
            "--reorder-delay", "0.3", "--old-shape-rate", "0.3", "--snake-case-rate", "0.3")).log
        parts.start("receiver", vinr_recon("serve", "--port", receiver.rsplit(":", 1)[1]))
        worker_log = parts.start("worker", vinr_recon("worker")).log
        wait_until(lambda: sandbox_url(sandbox_log) == base, "the sandbox did not print its URL", parts)
        wait_until(lambda: ready(f"{receiver}/readyz"), "the receiver was not ready", parts)
        wait_until(lambda: "worker started" in worker_log.read_text(errors="replace"), "the worker did not start",
                   parts)
        with httpx.Client(base_url=base, headers={"X-Api-Key": API_KEY}, timeout=10) as vinr, \
                httpx.Client(base_url=receiver, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10) as api:
            yield vinr, api, parts
            namespace = vinr.get("/customers", params={"limit": 1}).json()["data"][0]["id"][len("cust_"):-6]
    finally:
        parts.stop_all()
        drop_keys(queue, namespace)


def call(client: httpx.Client, method: str, path: str, expect: int = 200, **body) -> dict:
    response = client.request(method, path, json=body or None)
    assert response.status_code == expect, response.text
    return response.json()


def guide_invoice(vinr: httpx.Client, customer: str, lines: list[tuple[str, int, int]], project: str) -> str:
    """Create, add lines, finalize and send, as the guide does; the invoice's id."""
    invoice = call(vinr, "POST", "/invoices", customer=customer, currency="EUR", collectionMethod="send_invoice",
                   daysUntilDue=14, metadata={"projectId": project})
    for description, quantity, unit_amount in lines:
        call(vinr, "POST", f"/invoices/{invoice['id']}/lines", description=description, quantity=quantity,
             unitAmount=unit_amount)
    assert call(vinr, "POST", f"/invoices/{invoice['id']}/finalize")["status"] == "open"
    call(vinr, "POST", f"/invoices/{invoice['id']}/send")
    return invoice["id"]


def test_the_seed_guides_flow_through_real_processes_lands_in_the_ledger_as_vinr_has_it(deployment):
    vinr, api, parts = deployment
    customer = call(vinr, "POST", "/customers", email="ops@acme.example", name="Acme GmbH",
                    metadata={"accountId": "acct_8842"})["id"]
    # The guide: implementation plus eight support hours, paid on the hosted page by card.
    paid = guide_invoice(vinr, customer, [("Implementation — May 2026", 1, 120000), ("Support hours", 8, 9500)],
                         "proj_2291")
    assert call(vinr, "POST", f"/invoices/{paid}/pay", card="4242424242424242")["status"] == "paid"
    # The guide's test cards: declined (stays open), and 3-D Secure, approved on the second try.
    declined = guide_invoice(vinr, customer, [("Managed hosting — June 2026", 1, 45000)], "proj_2291")
    call(vinr, "POST", f"/invoices/{declined}/pay", expect=402, card="4000000000000002")
    secure = guide_invoice(vinr, customer, [("Workshop", 2, 80000)], "proj_2307")
    call(vinr, "POST", f"/invoices/{secure}/pay", expect=402, card="4000000000003220")
    call(vinr, "POST", f"/invoices/{secure}/pay", card="4000000000003220", threeDSecure="approve")
    invoices = [paid, declined, secure]

    def ledger_matches() -> bool:
        for invoice_id in invoices:
            theirs = call(vinr, "GET", f"/invoices/{invoice_id}")
            ours = api.get(f"/api/invoices/{invoice_id}")
            if ours.status_code != 200 or any(ours.json()[f] != theirs[f] for f in FIELDS):
                return False
        return True

    wait_until(ledger_matches, "the ledger did not come to match VINR", parts)

    guide = api.get(f"/api/invoices/{paid}").json()
    assert (guide["status"], guide["total"], guide["amountPaid"], guide["amountDue"]) == ("paid", 196000, 196000, 0)
    assert any(e["type"] == "invoice.paid" and e["source"] == "webhook" for e in guide["events"])
    event_ids = [e["id"] for e in guide["events"]]
    assert len(event_ids) == len(set(event_ids))  # each event kept once, however often it came
    assert {p["account"] for entry in guide["entries"] for p in entry["postings"]} >= {
        "accounts_receivable", "revenue", "vinr_clearing"}
    assert api.get(f"/api/invoices/{declined}").json()["status"] == "open"

    rows = api.get("/api/balances").json()["balances"]
    balance = {row["account"]: row for row in rows if row["currency"] == "EUR"}
    assert sum(r["debits"] for r in rows) == sum(r["credits"] for r in rows)
    assert balance["accounts_receivable"]["balance"] == 45000  # only the declined invoice is owed
    assert balance["vinr_clearing"]["balance"] == 196000 + 160000  # what the two card payments collected
    assert balance["revenue"]["credits"] - balance["revenue"]["debits"] == 196000 + 45000 + 160000
    for row in rows:
        assert row["balance"] == row["debits"] - row["credits"]

    # And the API is not open without the token.
    assert httpx.get(f"{str(api.base_url).rstrip('/')}/api/balances").status_code == 401
