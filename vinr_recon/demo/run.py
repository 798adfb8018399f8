"""`vinr-recon demo`: the sandbox, the receiver and the worker as real processes on loopback
(as the Procfile runs them), a SQLite ledger in a temporary folder, the seed guide's story with
VINR's bad days on, a reconciliation, and a report. Exit 0 only when the ledger matches VINR.

Everything it starts is stopped and its folder removed when it ends, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import Any

import httpx
from rich.console import Console

from vinr_recon.demo.processes import DemoFailure, Processes, vinr_recon
from vinr_recon.demo.services import Mailbox, RedisChoice, choose_redis, free_port, remove_keys
from vinr_recon.demo.story import StoryError, StoryInvoice, tell
from vinr_recon.settings import Settings

START_TIMEOUT = 30.0
DRAIN_TIMEOUT = 30.0
NOTICE_TIMEOUT = 15.0  # alerts and callbacks still queued after this are reported as pending
FINANCE = "finance@merchant.example"  # ALERT_DEFAULT_RECIPIENT


@dataclass
class BadDays:
    """The sandbox's bad days for the demo: seeded, so a run can be repeated."""

    seed: int
    duplicate_rate: float = 0.3
    duplicate_count: int = 2
    reorder_delay: float = 0.3
    drop_rate: float = 0.2
    old_shape_rate: float = 0.2
    snake_case_rate: float = 0.2

    def flags(self) -> list[str]:
        return ["--seed", str(self.seed), "--duplicate-rate", str(self.duplicate_rate),
                "--duplicate-count", str(self.duplicate_count), "--reorder-delay", str(self.reorder_delay),
                "--drop-rate", str(self.drop_rate), "--old-shape-rate", str(self.old_shape_rate),
                "--snake-case-rate", str(self.snake_case_rate)]


@dataclass
class Outcome:
    """Everything the report shows."""

    redis: RedisChoice
    folder: Path
    bad_days: BadDays
    customer: str = ""
    credit: dict[str, int] = field(default_factory=dict)  # the customer's creditBalance at VINR
    story: list[StoryInvoice] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    vinr: dict[str, dict] = field(default_factory=dict)
    before: dict[str, dict | None] = field(default_factory=dict)
    after: dict[str, dict | None] = field(default_factory=dict)
    run: dict | None = None
    balances: list[dict] = field(default_factory=list)
    mailbox: Mailbox | None = None
    notices_pending: int = 0
    seconds: float = 0.0


def _children_env(settings_names: set[str], values: dict[str, str]) -> dict[str, str]:
    """This process's environment without any of the service's settings, plus the demo's own."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in settings_names}
    env.update(values, PYTHONUNBUFFERED="1")
    return env


async def _wait_for(what: str, check, procs: Processes, timeout: float = START_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        procs.check()
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DemoFailure(f"{what} did not come up within {timeout:g} s")
        await asyncio.sleep(0.05)


async def receiver_ready(probe: httpx.AsyncClient, receiver: str) -> bool:
    """True once the receiver at `receiver` (its base URL) says it is ready; False while it does
    not answer yet, or answers not ready (Redis or the ledger not reachable yet)."""
    try:
        return (await probe.get(f"{receiver}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def _page_all(api: httpx.AsyncClient, path: str) -> list[dict]:
    items, after = [], None
    while True:
        params = {"limit": 100, **({"starting_after": after} if after else {})}
        page = (await api.get(path, params=params)).raise_for_status().json()
        items += page["data"]
        if not page["hasMore"] or not page["data"]:
            return items
        after = page["data"][-1]["id"]


def _delivered(event: dict) -> bool | None:
    """True when every copy's last attempt got a 2xx, None when none was attempted (dropped)."""
    last: dict[int, dict] = {}
    for attempt in event.get("deliveryAttempts") or ():
        if attempt["copy"] not in last or attempt["attempt"] > last[attempt["copy"]]["attempt"]:
            last[attempt["copy"]] = attempt
    if not last:
        return None
    return all(a["status"] is not None and 200 <= a["status"] < 300 for a in last.values())


async def _queued(redis_url: str, queue: str, namespace: str | None = None) -> int:
    """Jobs queued, deferred or running (arq keeps a job in the queue until it has finished); with
    `namespace`, only the events' jobs (their ids are VINR's event ids), not the notices'."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        if namespace is None:
            return await client.zcard(queue)
        return len([job async for job in client.zscan_iter(queue, match=f"*{namespace}*", count=1000)])
    finally:
        await client.aclose()


@dataclass
class Resources:
    """What the demo holds, so that the clean-up can give it all back."""

    procs: Processes
    mailbox: Mailbox
    queue: str
    redis: RedisChoice | None = None
    namespace: str | None = None  # the sandbox's id namespace: part of every key the demo made

    def release(self) -> None:
        self.procs.stop_all()
        self.mailbox.stop()
        if self.redis is None:
            return
        self.redis.stop()
        if self.redis.shared:
            # The queue's name is in its own keys and in the notices' job ids; the namespace in
            # the events' job ids.
            patterns = [f"*{self.queue}*"] + ([f"*{self.namespace}*"] if self.namespace else [])
            asyncio.run(remove_keys(self.redis.url, patterns))


async def demo(settings: Settings, args, res: Resources, console: Console) -> Outcome:
    started = time.monotonic()
    procs, mailbox, queue = res.procs, res.mailbox, res.queue
    folder = procs.folder
    bad_days = BadDays(seed=args.seed)
    with console.status("starting Redis, the mailbox, the sandbox, the receiver and the worker"):
        redis = await choose_redis(settings.redis_url, procs, folder)
        res.redis = redis
        out = Outcome(redis, folder, bad_days, mailbox=mailbox)
        mailbox.start()
        receiver_port, sandbox_port = free_port(), free_port()
        base = f"http://127.0.0.1:{sandbox_port}/v1"
        secret, api_key, token = "whsec_demo_" + token_hex(16), "vinr_test_" + token_hex(16), token_hex(16)
        receiver = f"http://127.0.0.1:{receiver_port}"
        names = set(Settings.model_fields)
        values = {
            "VINR_WEBHOOK_SECRET": secret, "VINR_API_KEY": api_key, "REDIS_URL": redis.url, "QUEUE_NAME": queue,
            "VINR_API_BASE": base, "DATABASE_URL": f"sqlite:///{folder / 'ledger.db'}", "LEDGER_API_TOKEN": token,
            "LOG_LEVEL": "INFO",
            "ALERT_DEFAULT_RECIPIENT": FINANCE, "ALERT_EMAIL_FROM": "vinr-recon@merchant.example",
            "FULFILMENT_URL": mailbox.fulfilment_url, "FULFILMENT_SECRET": mailbox.fulfilment_secret,
            "ALERT_WEBHOOK_URL": mailbox.chat_url,
            **({"SMTP_URL": mailbox.smtp_url} if mailbox.smtp_url else {}),
        }
        procs.env = _children_env(names, values)
        code, _ = await asyncio.to_thread(procs.run, "db-upgrade", vinr_recon("db", "upgrade"), 60)
        if code != 0:
            raise DemoFailure(f"`vinr-recon db upgrade` exited with status {code}")
        sandbox = procs.start("sandbox", vinr_recon(
            "sandbox", "--port", str(sandbox_port), "--api-key", api_key, "--webhook-url", f"{receiver}/webhooks/vinr",
            "--webhook-secret", secret, "--rate-limit", "0", "--time-scale", "0.001", *bad_days.flags()))
        procs.start("receiver", vinr_recon("serve", "--host", "127.0.0.1", "--port", str(receiver_port)))
        worker = procs.start("worker", vinr_recon("worker"))

        async def sandbox_up() -> bool:
            return f"VINR sandbox API: {base}" in sandbox.log.read_text(errors="replace")

        await _wait_for("the sandbox", sandbox_up, procs)

        async with httpx.AsyncClient(timeout=10) as probe:
            await _wait_for("the receiver", lambda: receiver_ready(probe, receiver), procs)

        async def worker_up() -> bool:
            return "worker started" in worker.log.read_text(errors="replace")

        await _wait_for("the worker", worker_up, procs)

    vinr = httpx.AsyncClient(base_url=base, headers={"X-Api-Key": api_key}, timeout=10)
    ledger = httpx.AsyncClient(base_url=receiver, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    try:
        with console.status("the story at VINR: Acme GmbH's invoices"):
            try:
                out.customer, out.story = await tell(vinr)
            except StoryError as exc:
                raise DemoFailure(f"the sandbox refused a step of the story: {exc}") from None
        namespace = res.namespace = out.customer[len("cust_"):-6]

        with console.status("VINR delivers the webhooks (duplicated, reordered, some dropped); the worker applies them"):
            await asyncio.sleep(2 * bad_days.reorder_delay + 0.3)
            deadline, calm = time.monotonic() + DRAIN_TIMEOUT, 0
            while calm < 3:
                procs.check()
                events = await _page_all(vinr, "/events")
                waiting = [e for e in events if _delivered(e) is False]
                busy = await _queued(redis.url, queue, namespace)
                calm = calm + 1 if not waiting and not busy else 0
                if time.monotonic() > deadline:
                    raise DemoFailure(f"the queue did not drain within {DRAIN_TIMEOUT:g} s "
                                      f"({len(waiting)} deliveries failing, {busy} jobs queued or running)")
                await asyncio.sleep(0.1)
            out.events = events

        out.credit = (await vinr.get(f"/customers/{out.customer}")).raise_for_status().json()["creditBalance"]
        for inv in out.story:
            out.vinr[inv.id] = (await vinr.get(f"/invoices/{inv.id}")).raise_for_status().json()
            out.before[inv.id] = await _ledger_invoice(ledger, inv.id)

        with console.status("reconciling the ledger with VINR's REST API"):
            for _ in range(20):
                code, stdout = await asyncio.to_thread(procs.run, "reconcile", vinr_recon("reconcile", "--json"), 60)
                if code != 3:  # 3: another run held the (Redis-wide) lock; try again shortly
                    break
                await asyncio.sleep(0.5)
            if code not in (0, 1):
                raise DemoFailure(f"`vinr-recon reconcile` exited with status {code}")
            out.run = json.loads(stdout)

        for inv in out.story:
            out.after[inv.id] = await _ledger_invoice(ledger, inv.id)
        out.balances = (await ledger.get("/api/balances")).raise_for_status().json()["balances"]

        with console.status("waiting for the alerts and callbacks"):
            deadline = time.monotonic() + NOTICE_TIMEOUT
            while (pending := await _queued(redis.url, queue)) and time.monotonic() < deadline:
                procs.check()
                await asyncio.sleep(0.1)
            out.notices_pending = pending
            await _settle(mailbox)
    finally:
        await vinr.aclose()
        await ledger.aclose()
    out.seconds = time.monotonic() - started
    return out


async def _ledger_invoice(ledger: httpx.AsyncClient, invoice_id: str) -> dict | None:
    response = await ledger.get(f"/api/invoices/{invoice_id}")
    if response.status_code == 404:
        return None
    return response.raise_for_status().json()


async def _settle(mailbox: Mailbox, quiet: float = 1.5, limit: float = 6.0) -> None:
    """Return once nothing new has arrived for `quiet` seconds (at most `limit` seconds)."""
    deadline = time.monotonic() + limit
    seen, since = mailbox.count(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        await asyncio.sleep(0.1)
        if mailbox.count() != seen:
            seen, since = mailbox.count(), time.monotonic()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args, settings: Settings) -> int:
    from vinr_recon.demo.report import print_failure, print_logs, print_report

    logging.getLogger().setLevel(logging.WARNING)  # the report is the output; the parts log to files
    console = Console(width=None if sys.stdout.isatty() else 150)
    folder = Path(tempfile.mkdtemp(prefix="vinr-recon-demo-"))
    res = Resources(Processes(folder, dict(os.environ)), Mailbox(fulfilment_secret="whsec_fulfil_" + token_hex(16)),
                    queue=f"vinr-recon-demo:{token_hex(8)}")
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    # Ctrl-C stops the demo even where it was started with SIGINT ignored (a background job).
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 1
    try:
        outcome = asyncio.run(demo(settings, args, res, console))
        code = print_report(console, outcome)
        if code != 0:
            print_logs(console, res.procs.children)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping everything the demo started[/yellow]")
        code = 130
    except (DemoFailure, httpx.HTTPError) as exc:
        print_failure(console, str(exc) or type(exc).__name__, res.procs.children)
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        try:
            try:
                res.release()
            except Exception as exc:  # the report has been printed; say it and go on
                console.print(f"[yellow]clean-up: {exc}[/yellow]")
            if args.keep:
                console.print(f"logs and ledger kept in {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return code
