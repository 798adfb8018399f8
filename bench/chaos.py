"""The chaos run (issue 9): VINR on a bad day, and the service's processes killed under it.

    .venv/bin/python bench/chaos.py [--invoices 2000] [--workers 2] [--seed 1] [--keep]
    .venv/bin/python bench/chaos.py --live [--live-seconds 120] [--reconcile-pause 1] [--history 0]
    sudo .venv/bin/python bench/chaos.py --hosts [--min-replicas 1] [--partition-seconds 10] [--invoices 2000]

The sandbox (`vinr-recon sandbox`) takes N invoices through full lifecycles (paid; partial then
paid; declined then paid; declined and left open; void, some after a partial payment;
uncollectible then paid late; 3-D Secure), in three waves (create and finalize, a first
payment step, a second), over a few dozen customers and three currencies. Its webhooks come
30 % duplicated, in random order (reorder delay) and 5 % never, in both payload shapes and
both key cases. The receiver (`vinr-recon serve`) and W workers (`vinr-recon worker`) run as
real processes against a private Redis with AOF persistence (`--appendfsync always`) and a
private PostgreSQL database (created, `vinr-recon db upgrade`d, dropped at the end); alerts
go to an aiosmtpd mailbox and a chat endpoint, the paid callback to an HTTP listener (all on
loopback, vinr_recon.demo.services.Mailbox).

While events flow, a worker is SIGKILLed and restarted (three times at full size) and Redis is
shut down and started again on the same port and AOF folder. Then: delivery settles and the
queue drains, `vinr-recon reconcile --json` runs, the alerts and callbacks drain. The figures
come from the sandbox's API (its events with every delivery attempt, its invoices) and from the
ledger's database; the expectations are derived independently of the service's code:

- mismatches: status, currency, total, amountPaid, amountDue (and appliedBalance, once the
  ledger keeps it) of every invoice, VINR vs ledger;
- facts posted twice: per invoice, the net of its postings on each account against what VINR's
  final snapshot implies (contract sections 3 and 6: clearing = amountPaid, receivable =
  amountDue while open, bad debt = amountDue while uncollectible, revenue = total, none when
  void; customer credit used = appliedBalance, and a void gives back what was paid and the
  credit used), plus entries per (invoice, kind) beyond what its lifecycle allows;
- trial balance per currency, and every entry balanced;
- alerts: one email and one chat message per payment_failed event applied while the ledger did
  not yet hold its invoice as paid or void (ledger/outbox.py `for_event`), in the ledger's
  order of application: its transactions (positions are locked before events are claimed, so
  a later transaction of one invoice has higher received_events ids); within one batch the
  order is not recorded, so for a failure batched with its invoice's paid or void event the
  outbox's choice is taken (counted apart). Plus one of each for a reconciliation run that
  found drift; one callback per invoice VINR ends with as paid. Each is identified by its
  idempotency key (invoice and attempt count for an alert, `idempotencyKey` for a callback).

Pass: 0 mismatches, 0 facts posted twice, every trial balance 0, every alert and callback
exactly once, and (the run's own premises) no acknowledged event lost and none dead-lettered.
Delivery of a notice is at least once: a worker killed after a send but before its record sends
it again. Such an identical copy (same Message-ID, idempotency key or text) arriving after a
crash of the run's own making is shown apart as redelivered; any other second arrival fails.
Exit 0 only then. tests/test_chaos.py runs a small copy of this in CI through `Chaos.execute`.

The live scenario (`--live`, issues 15 and 23): VINR's state moves while its webhooks go out and
reconciliation races them. Each invoice takes its three steps at times of its own, spread over
`--live-seconds` (live_schedule), so changes keep coming for as long as the runs go on, and
`vinr-recon reconcile --json` (a process, as above) runs again and again meanwhile,
`--reconcile-pause` seconds apart; two workers, one SIGKILLed; Redis is not restarted unless
asked (a run needs it for its lock). With `--history N`, VINR already holds N invoices in
every state when the service starts (`vinr-recon sandbox --preload`), none with an event
listed, as an account's years before vinr-recon: the first run finds each missing and books
it, so at least that run's corrections are checked whatever the race's timing. The sandbox
delivers each page of its invoice list `--list-latency` (0.5) seconds after reading it, as
over a network: a run's page can be older than a webhook the workers applied meanwhile, the
race a run must not lose. The last run is the first to start after VINR's last change; then
delivery settles and the queue drains, and no run follows. Why every invoice must then equal VINR: an invoice's final state either had a webhook
delivered (its snapshot moves the ledger there, and nothing newer exists), or it was dropped,
and then the last run, which read VINR after every change, saw the final state and corrected
it or found it caught up; webhooks arriving after that carry older snapshots, which move
nothing. So the invoices "whose only webhooks were dropped and that no run saw after their last
change" are none by construction, and a mismatch after the drain is a defect. The pass
condition adds:

- no change moved an invoice backwards (`regressions`): replaying each invoice's journal by
  position version, amountPaid never drops and the stage its account nets show (open,
  uncollectible, paid or void) never goes back, and no `payment_reversal`, `credit_reversal`
  or `credit_applied_reversal` exists. VINR never moves backwards in this world, so each such change is
  drift a run invented (it rolled back a newer webhook);
- per run (its JSON, `ledger/runs.py::get_run`): every finding recorded as corrected names
  entries, each of them in the ledger with that run's `run_id` and that invoice; a run that says
  `matches: true` left no finding uncorrected and moved nothing backwards. A difference that
  webhooks closed before the run could correct it is no finding; the run counts it apart
  (`caughtUpInFlight`, shown n/a when the service does not report it; once one run reports it,
  all must, and tests/test_chaos.py requires it);
- the checks above hold, with two that a race makes order-dependent judged as the service's
  own record shows them, and counted apart: an acknowledged event that a run's backfill
  recorded before its job ran is lost only if no worker logged running its job; and for a
  payment failure of an invoice a run moved to paid or void (a transaction ordered against
  the event's only by the position's lock), the outbox's choice of alert is taken. Every run
  that found drift owes one email and one chat message.

The per-run table shows findings (by category), corrections, caught in flight, backfilled,
matches, corrected findings (with entries that check out) and changes that undid progress.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402

from vinr_recon.demo.processes import Child, DemoFailure, Processes, vinr_recon  # noqa: E402
from vinr_recon.demo.run import _children_env, _delivered, _page_all, _queued, receiver_ready  # noqa: E402
from vinr_recon.demo.services import Mailbox, free_port, start_private_redis  # noqa: E402
from vinr_recon.demo.story import CARD_3DS, CARD_DECLINED, CARD_OK, StoryError, Vinr  # noqa: E402
from vinr_recon.settings import Settings  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
import pg_support  # noqa: E402  (a scratch database)
from hosts import Network  # noqa: E402  (test hosts: network namespaces, for --hosts)
from port_support import listening  # noqa: E402

PG_ADMIN_URL = os.environ.get("CHAOS_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
FINANCE = "finance@merchant.example"
LIFECYCLES = {  # name: weight
    "paid": 20, "partial_then_paid": 15, "declined_then_paid": 15, "declined_open": 10,
    "void": 10, "uncollectible_then_paid": 15, "three_d_secure": 15,
    "credit_note": 5,  # a proration credit: a negative total, the customer's credit for later invoices
}
CURRENCIES = ("EUR", "EUR", "EUR", "CHF", "USD")
FINAL = {"paid", "void"}


@dataclass
class ChaosConfig:
    invoices: int = 2000
    workers: int = 2
    seed: int = 1
    worker_kills: int = 3
    redis_restarts: int = 1
    redis_down: float = 1.0  # seconds Redis stays down
    job_timeout: float = 30.0  # a killed worker's jobs run again this + 10 s later (arq's in-progress key)
    duplicate_rate: float = 0.3
    drop_rate: float = 0.05
    reorder_delay: float = 0.5
    old_shape_rate: float = 0.2
    snake_case_rate: float = 0.2
    concurrency: int = 12  # invoices driven at once through the sandbox's API
    settle_timeout: float = 300.0
    log_level: str = "INFO"
    keep: bool = False
    # The live scenario (issues 15 and 23): VINR's steps spread over `live_seconds` while
    # `vinr-recon reconcile` runs again and again, `reconcile_pause` seconds apart.
    live: bool = False
    live_seconds: float = 120.0
    reconcile_pause: float = 1.0
    list_latency: float = 0.5  # live: an invoice list page arrives this long after VINR read it
    # Invoices VINR holds before the service starts, none with an event listed (an account's
    # history before vinr-recon; `vinr-recon sandbox --preload`): the first run finds and books each.
    history: int = 0
    # Across hosts (issue 22, `--hosts`, HostsChaos): each service on a network namespace of its own.
    hosts: bool = False
    min_replicas: int = 1  # REDIS_MIN_REPLICAS of the receivers
    partition_seconds: float = 10.0  # a worker host cut off from the database this long
    # What happens to the Redis primary: "kill" (SIGKILL), or "isolate" (cut off from its replica
    # and the Sentinels, not from the service, until `isolate_seconds` after the promotion).
    redis_fault: str = "kill"
    isolate_seconds: float = 3.0


@dataclass
class Plan:
    kind: str
    currency: str
    customer: int
    lines: list[tuple[str, int, int]]
    metadata: dict[str, str]
    id: str = ""
    partial: bool = False  # void: after a partial payment; declined_open: declined twice
    due: int = 0  # amountDue once finalized: the total less the customer's credit VINR applied
    done: bool = False  # final before its lifecycle ran out (the credit, or a tiny due, paid it)


@dataclass
class Figures:
    invoices: int = 0
    lifecycles: Counter = field(default_factory=Counter)
    history: Counter = field(default_factory=Counter)  # status -> invoices VINR held before the service
    events_sent: int = 0
    events_dropped: int = 0
    deliveries: int = 0
    acknowledged: int = 0
    refused: Counter = field(default_factory=Counter)  # non-2xx statuses (or errors) of attempts
    events_acknowledged: int = 0
    applied_webhook: int = 0
    backfilled: int = 0
    acknowledged_lost: list[str] = field(default_factory=list)
    never_recorded: list[str] = field(default_factory=list)
    dead_lettered: int = 0
    outcomes: Counter = field(default_factory=Counter)
    mismatched: list[str] = field(default_factory=list)
    double_postings: list[str] = field(default_factory=list)
    extra_entries: list[str] = field(default_factory=list)
    entries: int = 0
    unbalanced_entries: int = 0
    trial_balance: dict[str, int] = field(default_factory=dict)
    # currency -> (customer_credit in the ledger, the customers' creditBalance at VINR, credit applied)
    credit: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    notices: dict[str, dict[str, Any]] = field(default_factory=dict)  # channel -> expected/received/...
    outbox: Counter = field(default_factory=Counter)
    alerts_order_dependent: int = 0
    alerts_batched: int = 0
    alerts_resolved: int = 0  # backfilled payment failures of invoices VINR shows paid or void: held, never sent
    reconcile: dict[str, Any] = field(default_factory=dict)
    chaos: list[str] = field(default_factory=list)
    # The live scenario: every run (Chaos.reconcile_live, measured in Chaos.measure_runs).
    runs: list[dict[str, Any]] = field(default_factory=list)
    run_failures: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)  # ledger changes that moved an invoice backwards
    acked_backfilled: int = 0  # acknowledged, but a run's backfill recorded the event before its job did
    alerts_run_ordered: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    # Across hosts: where each service ran, and the ledger before reconciliation (HostsChaos).
    hosts: dict[str, str] = field(default_factory=dict)
    before_reconcile: dict[str, Any] = field(default_factory=dict)
    lost_allowed: bool = False  # REDIS_MIN_REPLICAS=0: what a failover loses is measured, not a failure

    @property
    def notices_ok(self) -> bool:
        return all(not (n["missing"] or n["unexpected"] or n["duplicates"]) for n in self.notices.values())

    @property
    def passed(self) -> bool:
        return (not self.mismatched and not self.double_postings and not self.extra_entries
                and not self.unbalanced_entries and all(v == 0 for v in self.trial_balance.values())
                and all(ledger == vinr for ledger, vinr, _ in self.credit.values())
                and self.notices_ok and bool(self.notices) and (self.lost_allowed or not self.acknowledged_lost)
                and not self.before_reconcile.get("failures")
                and not self.never_recorded and self.dead_lettered == 0
                and not self.regressions and not self.run_failures)

    def failures(self) -> list[str]:
        out = []
        for name, items in (("mismatched with VINR", self.mismatched), ("posted twice", self.double_postings),
                            ("entries beyond the lifecycle", self.extra_entries),
                            ("acknowledged but lost", self.acknowledged_lost),
                            ("never recorded", self.never_recorded),
                            ("changes that undid progress", self.regressions), ("runs", self.run_failures)):
            if items:
                out.append(f"{name}: {len(items)}: " + "; ".join(items[:5]))
        for channel, n in self.notices.items():
            for what in ("missing", "unexpected", "duplicates"):
                if n[what]:
                    out.append(f"{channel} {what}: {len(n[what])}: {sorted(map(str, n[what]))[:5]}")
        if self.dead_lettered:
            out.append(f"dead-lettered: {self.dead_lettered}")
        out += [f"before reconciliation: {f}" for f in self.before_reconcile.get("failures", [])]
        if self.unbalanced_entries:
            out.append(f"unbalanced entries: {self.unbalanced_entries}")
        for currency, value in self.trial_balance.items():
            if value:
                out.append(f"trial balance {currency}: {value}")
        return out

    def table(self) -> str:
        rows: list[tuple[str, str]] = [("hosts", ", ".join(f"{k} {v}" for k, v in self.hosts.items()))] if self.hosts else []
        rows.append(("invoices (lifecycles)",
                     f"{self.invoices} ({', '.join(f'{k} {v}' for k, v in sorted(self.lifecycles.items()))})"))
        if self.history:
            rows.append(("history: invoices VINR held before the service, no event listed",
                         f"{sum(self.history.values())} ({', '.join(f'{k} {v}' for k, v in sorted(self.history.items()))})"))
        rows += [
            ("chaos", "; ".join(self.chaos) or "none"),
            ("workers that exited on their own (e.g. Redis gone)", f"{len(self.unexpected_exits)} (restarted){': ' if self.unexpected_exits else ''}"
                                                   f"{'; '.join(self.unexpected_exits)}"),
            ("events sent by the sandbox", f"{self.events_sent} ({self.events_dropped} dropped on purpose)"),
            ("deliveries attempted", str(self.deliveries)),
            ("  acknowledged (2xx)", f"{self.acknowledged} ({self.events_acknowledged} distinct events)"),
            ("  refused or failed", ", ".join(f"{k}: {v}" for k, v in sorted(self.refused.items())) or "0"),
            ("events applied from webhooks", f"{self.applied_webhook} ({', '.join(f'{k} {v}' for k, v in sorted(self.outcomes.items()))})"),
            ("events backfilled by reconciliation", str(self.backfilled)),
            *([("before reconciliation", self.before_reconcile["summary"])] if self.before_reconcile else []),
            ("acknowledged events lost", str(len(self.acknowledged_lost))),
            ("events never recorded", str(len(self.never_recorded))),
            ("dead-lettered", str(self.dead_lettered)),
            ("reconciliation", f"exit {self.reconcile.get('exit')}, status {self.reconcile.get('status')}, "
                               f"counts {self.reconcile.get('counts')}, backfilled {self.reconcile.get('eventsBackfilled')}, "
                               f"corrections {self.reconcile.get('correctionsPosted')}"),
            ("invoices mismatched with VINR", str(len(self.mismatched))),
            ("facts posted twice (account nets vs VINR)", str(len(self.double_postings))),
            ("entries beyond the lifecycle", f"{len(self.extra_entries)} (of {self.entries} entries)"),
            ("unbalanced entries", str(self.unbalanced_entries)),
            ("trial balance (debits - credits)", ", ".join(f"{c} {v}" for c, v in sorted(self.trial_balance.items()))),
            ("customer credit: ledger / VINR's creditBalance (applied at finalize)",
             ", ".join(f"{c} {ledger} / {vinr} ({applied})" for c, (ledger, vinr, applied) in sorted(self.credit.items()))
             or "none"),
        ]
        for channel, n in self.notices.items():
            rows.append((f"{channel}: received / expected",
                         f"{n['received']} / {n['expected']} (missing {len(n['missing'])}, unexpected "
                         f"{len(n['unexpected'])}, duplicates {len(n['duplicates'])}, identical copies "
                         f"redelivered after a crash {len(n['redelivered'])}; {n['detail']})"))
        rows.append(("payment_failed events recorded after paid/void (no alert owed)", str(self.alerts_order_dependent)))
        rows.append(("payment_failed events batched with paid/void (the outbox decides)", str(self.alerts_batched)))
        rows.append(("payment_failed events backfilled for invoices VINR shows paid/void (held, resolved)",
                     str(self.alerts_resolved)))
        if self.runs:
            live = [r for r in self.runs if r["live"]]
            rows.append(("reconciliation runs (live scenario)",
                         f"{len(self.runs)} ({len(live)} started while VINR's state moved; the last started "
                         f"{self.runs[-1]['after_last_change']:.1f} s after VINR's last change, none after the drain)"))
            rows.append(("changes that undid progress (invented drift)", str(len(self.regressions))))
            rows.append(("acknowledged events a run backfilled first (their job then ran)", str(self.acked_backfilled)))
            rows.append(("payment_failed events ordered against a run's move to paid/void (the outbox decides)",
                         str(self.alerts_run_ordered)))
        rows.append(("outbox", ", ".join(f"{k} {v}" for k, v in sorted(self.outbox.items()))))
        rows.append(("phases (s)", ", ".join(f"{k} {v:.1f}" for k, v in self.phases.items())))
        rows.append(("wall time", f"{self.seconds:.1f} s"))
        rows.append(("PASS" if self.passed else "FAIL", "" if self.passed else " | ".join(self.failures())))
        width = max(len(k) for k, _ in rows)
        text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
        return f"{text}\n\n{self.runs_table()}" if self.runs else text

    def runs_table(self) -> str:
        """Per run: findings (by category) against corrections and what webhooks closed in flight."""
        head = ("run", "start s", "took s", "VINR moving", "findings (by category)", "corrections",
                "caught in flight", "backfilled", "matches", "corrected findings (entries ok)", "undid progress")
        rows = [head]
        for r in self.runs:
            by = ", ".join(f"{k.replace('_mismatch', '').replace('_', ' ')} {v}"
                           for k, v in sorted(r["by_category"].items()))
            rows.append((str(r["id"]), f"{r['started']:.1f}", f"{r['seconds']:.1f}", "yes" if r["live"] else "no",
                         f"{r['findings']}" + (f" ({by})" if by else ""), str(r["corrections"]),
                         "n/a" if r["caught"] is None else str(r["caught"]), str(r["backfilled"]),
                         str(r["matches"]).lower(), f"{r['corrected']} ({r['corrected'] - r['bad_entries']})",
                         str(r["undid"])))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


# --- the plan ------------------------------------------------------------------------------


def make_plans(cfg: ChaosConfig, customers: int) -> list[Plan]:
    rng = random.Random(cfg.seed)
    kinds = list(LIFECYCLES)
    weights = [LIFECYCLES[k] for k in kinds]
    plans = []
    for n in range(cfg.invoices):
        lines = [(f"Item {n}.{i}", rng.randint(1, 4), rng.randint(5, 2000) * 100) for i in range(rng.randint(1, 3))]
        metadata = {"projectId": f"proj_{n:05d}"}
        if rng.random() < 0.25:
            metadata["accountManager"] = f"am{n % 7}@merchant.example"
        kind = rng.choices(kinds, weights)[0]
        if kind == "credit_note":
            lines.append((f"Unused time {n}", 1, -(sum(q * u for _, q, u in lines) + rng.randint(1, 500) * 100)))
        plans.append(Plan(kind, rng.choice(CURRENCIES), rng.randrange(customers), lines, metadata,
                          partial=rng.random() < 0.5))
    return plans


def live_schedule(cfg: ChaosConfig, n: int) -> list[tuple[float, float, float]]:
    """When (seconds into the driving) each invoice takes its three steps in the live scenario:
    the first anywhere in the first 60 % of `live_seconds`, each next one up to a fifth of it
    later, so some follow each other within the reorder delay and some far apart."""
    rng, span = random.Random(cfg.seed * 7919 + 1), cfg.live_seconds
    out = []
    for _ in range(n):
        first = rng.random() * 0.6 * span
        second = first + rng.random() * 0.2 * span
        out.append((first, second, second + rng.random() * 0.2 * span))
    return out


async def wave(vinr: Vinr, plan: Plan, step: int, customers: list[str]) -> None:
    """One step of an invoice's lifecycle: 0 creates, finalizes and sends it; 1 and 2 pay it."""
    k, inv = plan.kind, plan.id
    if step == 0:
        made = await vinr.invoice(customers[plan.customer], plan.lines, currency=plan.currency, metadata=plan.metadata)
        plan.id, plan.due, plan.done = made["id"], made["amountDue"], made["status"] == "paid"
        return
    if plan.done:
        return  # credit a void gave back (live: voids come between finalizations) paid it at finalize
    part = plan.due // 3
    if part == 0 and (k == "partial_then_paid" or (k == "void" and plan.partial)) and step == 1:
        await vinr.pay(inv, CARD_OK)  # too little due to pay in part
        plan.done = True
        return
    if step == 1:
        if k == "paid":
            await vinr.pay(inv, CARD_OK)
        elif k == "partial_then_paid" or (k == "void" and plan.partial):
            await vinr.pay(inv, CARD_OK, amount=part)
        elif k in ("declined_then_paid", "declined_open"):
            await vinr.pay(inv, CARD_DECLINED, expect=402)
        elif k == "void":
            await vinr.call("POST", f"/invoices/{inv}/void")
        elif k == "uncollectible_then_paid":
            await vinr.call("POST", f"/invoices/{inv}/mark_uncollectible")
        elif k == "three_d_secure":
            await vinr.pay(inv, CARD_3DS, expect=402)
    elif step == 2:
        if k in ("partial_then_paid", "declined_then_paid", "uncollectible_then_paid"):
            await vinr.pay(inv, CARD_OK)
        elif k == "declined_open" and plan.partial:
            await vinr.pay(inv, CARD_DECLINED, expect=402)
        elif k == "void" and plan.partial:
            await vinr.call("POST", f"/invoices/{inv}/void")
        elif k == "three_d_secure":
            await vinr.pay(inv, CARD_3DS, threeDSecure="approve")


# --- the run -------------------------------------------------------------------------------


class Chaos:
    """Everything the run started, and the acts of chaos."""

    def __init__(self, cfg: ChaosConfig, folder: Path):
        self.cfg, self.folder = cfg, folder
        self.procs = Processes(folder, dict(os.environ))
        self.mailbox = Mailbox(fulfilment_secret="whsec_fulfil_" + token_hex(16))
        self.queue = f"vinr-recon-chaos:{token_hex(6)}"
        self.workers: dict[int, Child] = {}
        self.killed: set[int] = set()  # pids we killed on purpose
        # [start, end] of each fault of the run's making (a worker killed or dead, Redis down or
        # isolated, PostgreSQL restarted, a host cut off): end is start for one of no duration.
        self.crashes: list[list[float]] = []
        self.redis: Child | None = None
        self.redis_port = 0
        self.redis_url = ""
        self.database = f"vinr_chaos_{token_hex(6)}"
        self.database_url = ""
        self.figures = Figures(invoices=cfg.invoices)
        self.redis_restarting = False
        self.vinr_done = asyncio.Event()  # live: VINR's last change is made
        self.vinr_done_at = 0.0
        self.drive_started = 0.0
        self.final_by_run: set[str] = set()  # invoices a reconciliation moved to paid or void
        self.written_off: set[str] = set()  # invoices the ledger wrote off, and whose alert no backfill resolved
        self.resolved: set[str] = set()  # outbox keys a backfill held, then found its invoice paid or void

    # services

    async def create_database(self) -> None:
        self.database_url = await pg_support.create_database(PG_ADMIN_URL, self.database)

    async def drop_database(self) -> None:
        if self.database_url:
            await pg_support.drop_database(PG_ADMIN_URL, self.database)

    async def start_redis(self) -> None:
        aof = self.folder / "redis"
        aof.mkdir(exist_ok=True)
        self.redis_url, self.redis = await start_private_redis(
            self.procs, aof, port=self.redis_port or None, appendfsync="always")
        self.redis_port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])

    def start_worker(self, n: int) -> None:
        self.workers[n] = self.procs.start(f"worker-{n}", vinr_recon("worker", "--job-timeout", str(self.cfg.job_timeout)))

    def ops(self, argv: list[str]) -> list[str]:
        """Where a one-off command (`vinr-recon reconcile`) runs: here, on this machine."""
        return argv

    def service_settings(self, secret: str, api_key: str, base: str, redis: dict[str, str]) -> dict[str, str]:
        """The settings every process of the run is given; `redis`, how it reaches Redis."""
        return {
            "VINR_WEBHOOK_SECRET": secret, "VINR_API_KEY": api_key, "VINR_API_BASE": base, **redis,
            "QUEUE_NAME": self.queue, "DATABASE_URL": self.database_url,
            "LEDGER_API_TOKEN": token_hex(16), "LOG_LEVEL": self.cfg.log_level,
            "SMTP_URL": self.mailbox.smtp_url, "ALERT_WEBHOOK_URL": self.mailbox.chat_url,
            "ALERT_DEFAULT_RECIPIENT": FINANCE, "ALERT_EMAIL_FROM": "vinr-recon@merchant.example",
            "FULFILMENT_URL": self.mailbox.fulfilment_url, "FULFILMENT_SECRET": self.mailbox.fulfilment_secret,
            "RECONCILE_AT": "23:59",
        }

    async def upgrade_schema(self) -> None:
        """`vinr-recon db upgrade` with the children's environment, where one-off commands run."""
        code, _ = await asyncio.to_thread(self.procs.run, "db-upgrade", self.ops(vinr_recon("db", "upgrade")), 120)
        if code != 0:
            raise DemoFailure(f"`vinr-recon db upgrade` exited with status {code}")

    # chaos

    def kill_worker(self, n: int) -> None:
        child = self.workers[n]
        self.killed.add(child.popen.pid)
        self.crashes.append([time.monotonic()] * 2)
        os.killpg(child.popen.pid, signal.SIGKILL)
        child.popen.wait(10)
        self.start_worker(n)

    async def restart_redis(self) -> float:
        started = time.monotonic()
        self.redis_restarting = True
        try:
            child = self.redis
            self.crashes.append([time.monotonic()] * 2)
            os.killpg(child.popen.pid, signal.SIGTERM)  # redis: fsync the AOF, then exit
            await asyncio.to_thread(child.popen.wait, 30)
            await asyncio.sleep(self.cfg.redis_down)
            await self.start_redis()
        finally:
            self.redis_restarting = False
        return time.monotonic() - started

    def supervise(self) -> None:
        """Fail if the sandbox or the receiver died; restart a worker that died on its own (as a
        process manager would) and count it."""
        for child in self.procs.children:
            if child.popen.poll() is None or child.popen.pid in self.killed:
                continue
            if child is self.redis and self.redis_restarting:
                continue
            if child in self.workers.values():
                n = next(k for k, v in self.workers.items() if v is child)
                self.figures.unexpected_exits.append(f"worker-{n} exited with {child.popen.returncode}")
                self.crashes.append([time.monotonic()] * 2)
                self.killed.add(child.popen.pid)
                self.start_worker(n)
                continue
            if child.name.startswith(("db-upgrade", "reconcile")):
                continue
            if child is not self.redis and child.name == "redis":
                continue  # an earlier Redis, stopped on purpose
            raise DemoFailure(f"{child.name} exited with status {child.popen.returncode}\n{child.tail()}")

    async def chaos_acts(self, progress: list[int], total: int) -> None:
        """Acts at fixed shares of the driving: worker kills spread over it, Redis restarts among them."""
        cfg = self.cfg
        acts: list[tuple[float, str]] = []
        for i in range(cfg.worker_kills):
            acts.append(((i + 0.5) / (cfg.worker_kills + 0.5) * 0.8 + 0.02, "kill"))
        for i in range(cfg.redis_restarts):
            acts.append(((i + 1) / (cfg.redis_restarts + 1) * 0.8 + 0.1, "redis"))
        acts.sort()
        victim = 0
        for share, act in acts:
            while progress[0] < share * total:
                await asyncio.sleep(0.02)
            at = f"{progress[0] / total:.0%} of the driving"
            if act == "kill":
                n = victim % cfg.workers + 1
                victim += 1
                self.kill_worker(n)  # SIGKILL is immediate: the wait takes milliseconds
                self.figures.chaos.append(f"SIGKILL worker-{n} at {at}")
            else:
                down = await self.restart_redis()
                self.figures.chaos.append(f"Redis restarted at {at} (down {down:.1f} s)")

    async def run(self) -> Figures:
        fig = self.figures
        started = time.monotonic()
        mark = started

        def phase(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            fig.phases[name] = now - mark
            mark = now

        base, api_key = await self.start_services()
        phase("start")
        await self.drive_and_check(base, api_key, phase)
        fig.seconds = time.monotonic() - started
        return fig

    async def start_services(self) -> tuple[str, str]:
        """Start everything the run needs; VINR's API base and key."""
        cfg = self.cfg
        self.mailbox.start()
        await self.start_redis()
        await self.create_database()
        receiver_port, sandbox_port = free_port(), free_port()
        base = f"http://127.0.0.1:{sandbox_port}/v1"
        receiver = f"http://127.0.0.1:{receiver_port}"
        secret, api_key = "whsec_chaos_" + token_hex(16), "vinr_test_" + token_hex(16)
        values = self.service_settings(secret, api_key, base, {"REDIS_URL": self.redis_url})
        self.procs.env = _children_env(set(Settings.model_fields), values)
        await self.upgrade_schema()
        sandbox = self.procs.start("sandbox", vinr_recon(
            "sandbox", "--port", str(sandbox_port), "--api-key", api_key,
            "--webhook-url", f"{receiver}/webhooks/vinr", "--webhook-secret", secret,
            "--rate-limit", "0", "--time-scale", "0.001", "--seed", str(cfg.seed),
            "--duplicate-rate", str(cfg.duplicate_rate), "--duplicate-count", "1",
            "--reorder-delay", str(cfg.reorder_delay), "--drop-rate", str(cfg.drop_rate),
            "--old-shape-rate", str(cfg.old_shape_rate), "--snake-case-rate", str(cfg.snake_case_rate),
            "--list-latency", str(cfg.list_latency if cfg.live else 0.0), "--preload", str(cfg.history)))
        self.procs.start("receiver", vinr_recon("serve", "--host", "127.0.0.1", "--port", str(receiver_port)))
        for n in range(1, cfg.workers + 1):
            self.start_worker(n)
        await self._wait("the sandbox", lambda: f"VINR sandbox API: {base}" in sandbox.log.read_text(errors="replace"))
        async with httpx.AsyncClient(timeout=5) as probe:
            await self._wait("the receiver", lambda: receiver_ready(probe, receiver))
        for child in self.workers.values():
            await self._wait(child.name, lambda c=child: "worker started" in c.log.read_text(errors="replace"))
        return base, api_key

    async def drive_and_check(self, base: str, api_key: str, phase) -> None:
        cfg = self.cfg
        limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
        client = httpx.AsyncClient(base_url=base, headers={"X-Api-Key": api_key}, timeout=30, limits=limits)
        try:
            await self.drive(client)
            phase("drive")
            await self.settle(client)
            phase("settle")
            if not cfg.live:  # live: the runs are over, and the ledger must hold without another
                await self.reconcile()
                phase("reconcile")
            await self.drain_notices()
            phase("notices")
            await self.measure(client)
            phase("measure")
        finally:
            await client.aclose()

    def execute(self) -> Figures:
        """The whole run; everything it started is stopped and its database dropped, whatever
        happens. The logs stay in its folder."""
        async def main() -> Figures:
            try:
                return await self.run()
            finally:
                await _cleanup(self)

        return asyncio.run(main())

    async def _wait(self, what: str, check, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.supervise()
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            if time.monotonic() > deadline:
                raise DemoFailure(f"{what} did not come up within {timeout:g} s")
            await asyncio.sleep(0.05)

    async def drive(self, client: httpx.AsyncClient) -> None:
        cfg = self.cfg
        vinr = Vinr(client)
        n_customers = max(3, cfg.invoices // 50)
        customers = []
        for i in range(n_customers):
            metadata = {"accountId": f"acct_{i}"} | ({"accountManager": f"cm{i}@merchant.example"} if i % 3 == 0 else {})
            customers.append((await vinr.call("POST", "/customers", {
                "email": f"billing{i}@customer.example", "name": f"Customer {i}", "metadata": metadata}))["id"])
        self.namespace = customers[0][len("cust_"):-6]
        self.drive_started = time.monotonic()
        self.plans = make_plans(cfg, n_customers)
        self.figures.lifecycles = Counter(p.kind for p in self.plans)
        total = 3 * len(self.plans)
        progress = [0]
        acts = asyncio.create_task(self.chaos_acts(progress, total))
        gate = asyncio.Semaphore(cfg.concurrency)

        async def one(plan: Plan, step: int) -> None:
            async with gate:
                try:
                    await wave(vinr, plan, step, customers)
                except StoryError as exc:
                    raise DemoFailure(f"the sandbox refused a step ({plan.kind}, step {step}): {exc}") from None
                progress[0] += 1

        async def lifecycle(plan: Plan, times: tuple[float, ...], start: float) -> None:
            for step, at in enumerate(times):
                await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                await one(plan, step)

        async def watch(tasks: list[asyncio.Task], also: list[asyncio.Task]) -> None:
            try:
                while tasks:
                    done, pending = await asyncio.wait(tasks, timeout=0.5, return_when=asyncio.FIRST_EXCEPTION)
                    for task in done:
                        task.result()
                    tasks = list(pending)
                    self.supervise()
                    for task in also:
                        if task.done():
                            task.result()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        runs = asyncio.create_task(self.reconcile_live()) if cfg.live else None
        background = [acts] + ([runs] if runs else [])
        try:
            if cfg.live:
                # VINR's state moves for `live_seconds`: each invoice's steps at times of its own,
                # so changes (and their webhooks) keep coming for as long as the runs go on.
                start, schedule = time.monotonic(), live_schedule(cfg, len(self.plans))
                await watch([asyncio.create_task(lifecycle(plan, times, start))
                             for plan, times in zip(self.plans, schedule)], background)
            else:
                for step in range(3):
                    await watch([asyncio.create_task(one(plan, step)) for plan in self.plans], background)
            self.vinr_done_at = time.monotonic()
            progress[0] = total
            await acts
            if runs:
                self.vinr_done.set()
                await watch([runs], [])
        finally:
            for task in background:
                if not task.done():
                    task.cancel()

    async def settle(self, client: httpx.AsyncClient) -> None:
        """Wait until every delivery got its 2xx (or was dropped) and no event's job is left."""
        deadline, calm = time.monotonic() + self.cfg.settle_timeout, 0
        while calm < 2:
            self.supervise()
            events = await _page_all(client, "/events")
            waiting = [e for e in events if _delivered(e) is False]
            try:
                busy = await _queued(self.redis_url, self.queue, self.namespace)
            except Exception as exc:
                busy = repr(exc)
            calm = calm + 1 if not waiting and not busy else 0
            if time.monotonic() > deadline:
                busy = f"{busy}: {await self.stuck_jobs()}"
                raise DemoFailure(f"delivery did not settle within {self.cfg.settle_timeout:g} s "
                                  f"({len(waiting)} deliveries failing, e.g. {[e['id'] for e in waiting[:3]]}; "
                                  f"event jobs queued or running: {busy})")
            await asyncio.sleep(0.5)

    async def stuck_jobs(self, limit: int = 5) -> list[str]:
        """What Redis and the ledger hold of the event jobs still in the queue (for a failure message)."""
        from redis.asyncio import Redis

        client = Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2)
        conn = await asyncpg.connect(self.database_url)
        out = []
        try:
            jobs = [j async for j in client.zscan_iter(self.queue, match=f"*{self.namespace}*", count=1000)]
            for job_id, score in jobs[:limit]:
                job_id = job_id.decode()
                keys = {prefix: await client.pttl(f"arq:{prefix}:{job_id}") for prefix in ("job", "in-progress", "retry", "result")}
                row = await conn.fetchrow("SELECT outcome, source FROM received_events WHERE event_id = $1", job_id)
                out.append(f"{job_id} score {score:.0f} (now {time.time() * 1000:.0f}) ttl {keys} ledger {dict(row) if row else None}")
        finally:
            await client.aclose()
            await conn.close()
        return out

    async def reconcile(self) -> None:
        self.figures.reconcile = summary(await self.reconcile_run())

    async def reconcile_run(self) -> dict[str, Any]:
        """One `vinr-recon reconcile --json` process to its end: its exit status, its JSON (the run
        with its findings), and when it started and ended (time.monotonic())."""
        started = time.monotonic()
        for _ in range(60):
            code, stdout = await asyncio.to_thread(self.procs.run, "reconcile", self.ops(vinr_recon("reconcile", "--json")), 600)
            if code != 3:  # 3: another run held the lock
                break
            await asyncio.sleep(0.5)
        try:
            run = json.loads(stdout) if code in (0, 1) else None
        except ValueError:
            run = None
        if run is None:
            log = next(c for c in reversed(self.procs.children) if c.name == "reconcile")
            raise DemoFailure(f"`vinr-recon reconcile` exited with status {code} and no run as JSON\n{log.tail(15)}")
        run = run.get("run", run) if isinstance(run, dict) else {}
        return {"exit": code, "json": run, "started_at": started, "finished_at": time.monotonic()}

    async def reconcile_live(self) -> None:
        """Runs back to back, `reconcile_pause` apart, while VINR's state moves and its webhooks
        flow; the last is the first to start after VINR's last change (`vinr_done`)."""
        while True:
            last = self.vinr_done.is_set()
            self.figures.runs.append(await self.reconcile_run())
            if last:
                self.figures.reconcile = summary(self.figures.runs[-1])
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.vinr_done.wait(), self.cfg.reconcile_pause)

    async def drain_notices(self) -> None:
        deadline = time.monotonic() + self.cfg.settle_timeout
        conn = await asyncpg.connect(self.database_url)
        try:
            while True:
                self.supervise()
                pending = await conn.fetchval("SELECT count(*) FROM outbox WHERE status = 'pending'")
                try:
                    queued = await _queued(self.redis_url, self.queue)
                except Exception:
                    queued = -1
                if not pending and not queued:
                    break
                if time.monotonic() > deadline:
                    break  # measured as missing
                await asyncio.sleep(0.3)
        finally:
            await conn.close()
        quiet_since, seen = time.monotonic(), self.mailbox.count()
        while time.monotonic() - quiet_since < 1.5:
            await asyncio.sleep(0.1)
            if self.mailbox.count() != seen:
                seen, quiet_since = self.mailbox.count(), time.monotonic()

    # --- measuring ---------------------------------------------------------------------------

    async def measure(self, client: httpx.AsyncClient) -> None:
        fig = self.figures
        events = await _page_all(client, "/events")  # every event, with every delivery attempt
        invoices = {inv["id"]: inv for inv in await _page_all(client, "/invoices")}
        by_id = {e["id"]: e for e in events}
        planned = {p.id for p in self.plans}
        fig.history = Counter(inv["status"] for i, inv in invoices.items() if i not in planned)

        # deliveries
        fig.events_sent = len(events)
        acked: set[str] = set()
        for e in events:
            attempts = e.get("deliveryAttempts") or []
            if not attempts:
                fig.events_dropped += 1
            for a in attempts:
                fig.deliveries += 1
                if a["status"] is not None and 200 <= a["status"] < 300:
                    fig.acknowledged += 1
                    acked.add(e["id"])
                else:
                    fig.refused[str(a["status"] or a["error"])] += 1
        fig.events_acknowledged = len(acked)

        conn = await asyncpg.connect(self.database_url)
        try:
            received = await conn.fetch("SELECT id, event_id, invoice_id, source, outcome, applied_at "
                                        "FROM received_events ORDER BY id")
            staged = {r["key"] for r in await conn.fetch("SELECT key FROM outbox")}
            fig.dead_lettered = await conn.fetchval("SELECT count(*) FROM dead_letters")
            entries = await conn.fetch("SELECT id, idempotency_key, kind, invoice_id, currency, source, event_id, run_id "
                                       "FROM journal_entries ORDER BY id")
            postings = await conn.fetch("SELECT entry_id, account, direction, amount, currency FROM postings")
            positions = {r["invoice_id"]: r for r in await conn.fetch("SELECT * FROM invoice_positions")}
            outbox = await conn.fetch("SELECT key, kind, status FROM outbox")
            fig.outbox = Counter(f"{r['kind']}/{r['status']}" for r in outbox)
        finally:
            await conn.close()

        recorded = {r["event_id"]: r for r in received}
        fig.applied_webhook = sum(1 for r in received if r["source"] == "webhook")
        fig.backfilled = sum(1 for r in received if r["source"] == "backfill")
        fig.outcomes = Counter(r["outcome"] for r in received if r["source"] == "webhook")
        fig.dead_lettered += sum(1 for r in received if r["outcome"] == "dead")
        lost = {e for e in acked if recorded.get(e) is None or recorded[e]["source"] != "webhook"}
        if self.cfg.live:
            # A run racing the webhooks may backfill an event whose delivery was acknowledged while
            # its job still waited in the queue; that job then ran and found it recorded. Lost is an
            # acknowledged event whose job never ran (no worker logged applying it).
            raced = {e for e in lost if recorded.get(e) is not None and recorded[e]["source"] == "backfill"}
            ran = self.jobs_run(raced)
            fig.acked_backfilled = len(raced & ran)
            lost -= raced & ran
        fig.acknowledged_lost = sorted(lost)
        fig.never_recorded = sorted(e for e in by_id if e not in recorded)

        # invoices: VINR vs the ledger, ours and the account's history alike (a draft books nothing)
        for inv_id in sorted(invoices.keys() | planned):
            vinr, pos = invoices.get(inv_id), positions.get(inv_id)
            if vinr is not None and vinr["status"] == "draft" and pos is None and inv_id not in planned:
                continue
            if vinr is None or pos is None:
                fig.mismatched.append(f"{inv_id}: {'not at VINR' if vinr is None else 'not in the ledger'}")
                continue
            ledger = {"status": pos["status"], "currency": pos["currency"], "total": pos["total"],
                      "amountPaid": pos["amount_paid"], "amountDue": pos["amount_due"]}
            if "applied_balance" in pos.keys() and "appliedBalance" in vinr:  # once the ledger keeps it
                ledger["appliedBalance"] = pos["applied_balance"]
            diff = {k: (ledger[k], vinr[k]) for k in ledger if ledger[k] != vinr[k]}
            if diff:
                fig.mismatched.append(f"{inv_id}: " + ", ".join(f"{k} ledger {a} VINR {b}" for k, (a, b) in diff.items()))

        # postings: nets per invoice and account against what VINR's final snapshot implies
        entry_by_id = {e["id"]: e for e in entries}
        fig.entries = len(entries)
        net: dict[str, Counter] = defaultdict(Counter)
        per_entry: dict[int, int] = Counter()
        balance: Counter = Counter()
        for p in postings:
            signed = p["amount"] if p["direction"] == "debit" else -p["amount"]
            net[entry_by_id[p["entry_id"]]["invoice_id"]][p["account"]] += signed
            per_entry[p["entry_id"]] += signed
            balance[p["currency"]] += signed
        fig.unbalanced_entries = sum(1 for v in per_entry.values() if v)
        lines: dict[int, list] = defaultdict(list)
        for p in postings:
            lines[p["entry_id"]].append(p)
        fig.regressions, undid, self.final_by_run = regressions(entries, lines)
        if self.cfg.live:
            self.measure_runs(entry_by_id, undid, invoices, planned)
        fig.trial_balance = dict(balance)
        # Contract section 6: customer_credit (a credit balance) is the customers' creditBalance.
        owed, applied, ledger_credit = Counter(), Counter(), Counter()
        for customer in await _page_all(client, "/customers"):
            owed.update(customer.get("creditBalance") or {})
        for inv in invoices.values():
            applied[inv["currency"]] += inv.get("appliedBalance", 0)
        for p in postings:
            if p["account"] == "customer_credit":
                ledger_credit[p["currency"]] += p["amount"] if p["direction"] == "credit" else -p["amount"]
        fig.credit = {c: (ledger_credit[c], owed[c], applied[c]) for c in sorted(set(owed) | set(ledger_credit))}
        for inv_id, vinr in sorted(invoices.items()):
            want = expected_nets(vinr)
            got = {a: v for a, v in net.get(inv_id, Counter()).items() if v}
            if want != got:
                fig.double_postings.append(f"{inv_id} ({vinr['status']}): ledger {got} VINR implies {want}")

        # entries per (invoice, kind) against what the lifecycle allows
        payments = Counter()  # invoice -> increases of amountPaid at VINR
        last_paid: dict[str, int] = {}
        for e in sorted(events, key=lambda e: (e["created"], e["id"])):
            inv = e["data"]["object"]
            paid = inv.get("amountPaid", 0)
            if paid > last_paid.get(inv["id"], 0):
                payments[inv["id"]] += 1
            last_paid[inv["id"]] = max(paid, last_paid.get(inv["id"], 0))
        for inv_id, vinr in invoices.items():  # the history, no event listed: one run books what is paid
            if inv_id not in last_paid and vinr["amountPaid"] > 0:
                payments[inv_id] = 1
        kinds = Counter((e["invoice_id"], e["kind"]) for e in entries)
        for (inv_id, kind), count in sorted(kinds.items()):
            allowed = payments[inv_id] if kind == "payment" else 1 if kind in (
                "finalize", "void", "write_off", "recovery", "credit", "credit_applied") else 0
            if count > allowed:
                fig.extra_entries.append(f"{inv_id}: {count} {kind} entries, lifecycle allows {allowed}")

        # Issue 20: an invoice's first move to uncollectible (a write-off entry) owes one alert per
        # channel, unless a backfill held it and then found the invoice paid or void ('resolved').
        resolved = self.resolved = {r["key"] for r in outbox if r["status"] == "resolved"}
        self.written_off = {e["invoice_id"] for e in entries if e["kind"] == "write_off"
                            and f"uncollectible:{e['invoice_id']}:email" not in resolved}
        self.measure_notices(events, by_id, received, invoices, staged)

    def jobs_run(self, event_ids: set[str]) -> set[str]:
        """Those of `event_ids` whose job a worker ran to its end (its "event applied" log line)."""
        ran = set()
        for path in self.folder.glob("worker-*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if "event applied" not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("event_id") in event_ids:
                    ran.add(record["event_id"])
        return ran

    def measure_runs(self, entry_by_id: dict[int, Any], undid: Counter, invoices: dict[str, dict],
                     planned: set[str]) -> None:
        """Per run: findings against corrections. A corrected finding names entries of that run
        and invoice (none only for an invoice the ledger holds no entry of and VINR's books
        nothing: void before any payment); a run that says it matches left no finding uncorrected
        (a difference that webhooks closed before the run corrected it is no finding:
        `caughtUpInFlight` counts it)."""
        fig = self.figures
        booked = {e["invoice_id"] for e in entry_by_id.values()}

        def books(inv_id: str) -> bool:
            """A correction of it must post: unless the ledger holds no entry of the invoice at all
            and VINR's books nothing (a void before any payment, found missing)."""
            return inv_id in booked or inv_id not in invoices or bool(expected_nets(invoices[inv_id]))

        reported = [("caughtUpInFlight" in r["json"]) for r in fig.runs]
        if any(reported) and not all(reported):
            fig.run_failures.append(f"caughtUpInFlight reported by {sum(reported)} of {len(fig.runs)} runs")
        for n, r in enumerate(fig.runs):
            doc = r["json"]
            run_id, found = doc.get("id"), doc.get("findings") or []
            caught = doc.get("caughtUpInFlight")
            corrected = [f for f in found if f.get("corrected")]
            bad = [f for f in corrected if (not f.get("entries") and books(f["invoice"])) or any(
                entry_by_id.get(i) is None or entry_by_id[i]["run_id"] != run_id
                or entry_by_id[i]["invoice_id"] != f["invoice"] for i in f["entries"])]
            uncorrected = {f["invoice"] for f in found if not f.get("corrected")}
            fig.runs[n] = r = {
                **r, "id": run_id, "started": r["started_at"] - self.drive_started,
                "seconds": r["finished_at"] - r["started_at"], "live": r["started_at"] < self.vinr_done_at,
                "after_last_change": r["started_at"] - self.vinr_done_at,
                "by_category": Counter(f["category"] for f in found), "findings": len(found),
                "raced": sum(f["invoice"] in planned for f in found),
                "corrections": doc.get("correctionsPosted"), "caught": caught,
                "backfilled": doc.get("eventsBackfilled"), "matches": doc.get("matches"),
                "corrected": len(corrected), "bad_entries": len(bad), "undid": undid.get(run_id, 0)}
            if caught is not None and (not isinstance(caught, int) or caught < 0):
                fig.run_failures.append(f"run {run_id}: caughtUpInFlight {caught!r}")
            for f in bad[:3]:
                fig.run_failures.append(f"run {run_id}: corrected finding {f['invoice']} {f['field']} names entries "
                                        f"{f.get('entries')}, not entries of this run and invoice")
            if len(bad) > 3:
                fig.run_failures.append(f"run {run_id}: {len(bad) - 3} more such findings")
            if doc.get("matches") and uncorrected:
                fig.run_failures.append(f"run {run_id} says it matches with findings of {len(uncorrected)} "
                                        f"invoices uncorrected, e.g. {sorted(uncorrected)[:3]}")
            if doc.get("matches") and r["undid"]:
                fig.run_failures.append(f"run {run_id} says it matches but moved {r['undid']} invoices backwards")

    def measure_notices(self, events: list[dict], by_id: dict[str, dict], received, invoices: dict[str, dict],
                        staged: set[str]) -> None:
        fig = self.figures
        status_of = {e["id"]: e["data"]["object"]["status"] for e in events}
        # The ledger's order of application: transactions (one `applied_at` each) in the order of
        # their ids; an invoice's position is locked before its events are claimed, so a later
        # transaction of one invoice has higher ids. Within one transaction (a batch) the events
        # are applied in the order they reached the batch, which the database does not keep (it
        # claims them in event-id order): a payment failure batched with its invoice's paid or
        # void event may be owed an alert or not, and there the outbox's choice is taken.
        transactions: dict[str, dict[Any, list]] = defaultdict(dict)
        for r in received:
            if r["invoice_id"] is not None and r["event_id"] in by_id:
                transactions[r["invoice_id"]].setdefault(r["applied_at"], []).append(r)
        expected_alerts: dict[str, set[tuple[str, int]]] = {"email": set(), "chat": set()}
        order_dependent = batched = run_ordered = 0
        for invoice_id, groups in transactions.items():
            final_seen = False
            for group in groups.values():
                final_here = any(status_of[r["event_id"]] in FINAL for r in group)
                for r in group:
                    e = by_id[r["event_id"]]
                    if e["type"] != "invoice.payment_failed" or r["outcome"] == "dead":
                        continue
                    key = (invoice_id, e["data"]["object"]["attemptCount"])
                    if final_seen:
                        order_dependent += 1  # recorded after its invoice's paid or void: no alert owed
                        continue
                    if (r["source"] == "backfill" and invoices.get(invoice_id, {}).get("status") in FINAL
                            and f"payment_failed:{r['event_id']}:email" in self.resolved):
                        # Issue 20: a backfill holds the alerts it stages until it has applied every
                        # event it found; one whose invoice VINR then shows paid or void is never sent.
                        fig.alerts_resolved += 1
                        continue
                    if self.cfg.live and invoice_id in self.final_by_run:
                        # A run moved this invoice to paid or void, in a transaction the database
                        # orders against this event's only by a lock: the outbox's choice is taken.
                        run_ordered += 1
                        for channel in expected_alerts:
                            if f"payment_failed:{r['event_id']}:{channel}" in staged:
                                expected_alerts[channel].add(key)
                        continue
                    batched += final_here
                    for channel in expected_alerts:
                        if not final_here or f"payment_failed:{r['event_id']}:{channel}" in staged:
                            expected_alerts[channel].add(key)
                final_seen = final_seen or final_here
        fig.alerts_batched, fig.alerts_run_ordered = batched, run_ordered
        fig.alerts_order_dependent = order_dependent
        done = [summary(r) for r in fig.runs] if self.cfg.live else [fig.reconcile]
        expected_runs = {("run", r["id"]) for r in done if r.get("id") is not None and drifted(r)}
        written_off = {("uncollectible", i) for i in self.written_off}

        # Each arrival as (what it is about, when, what makes two arrivals the same copy).
        emails = [Arrival(alert_key(mail.subject, mail.body, plain=True), mail.at, mail.message_id or mail.body)
                  for mail in self.mailbox.emails]
        chats = []
        for chat in self.mailbox.chats:
            blocks = (chat.body or {}).get("blocks") or []
            text = "\n".join(b.get("text", {}).get("text", "") for b in blocks if isinstance(b, dict))
            chats.append(Arrival(alert_key(chat.text, text, plain=False), chat.at, chat.text))
        callbacks, unverified = [], 0
        for cb in self.mailbox.callbacks:
            key = (cb.body or {}).get("idempotencyKey")
            callbacks.append(Arrival(key, cb.at, key))
            unverified += cb.signature != "verified"
        expected_callbacks = {f"paid:{i}:fulfilment" for i, inv in invoices.items() if inv["status"] == "paid"}
        fig.notices["emails"] = tally(emails, expected_alerts["email"] | expected_runs | written_off, self.crashes,
                                      f"{len(expected_alerts['email'])} payment_failed + {len(expected_runs)} drift"
                                      f" + {len(written_off)} uncollectible")
        fig.notices["chat messages"] = tally(chats, expected_alerts["chat"] | expected_runs | written_off, self.crashes,
                                             f"{len(expected_alerts['chat'])} payment_failed + {len(expected_runs)} drift"
                                             f" + {len(written_off)} uncollectible")
        fig.notices["callbacks"] = tally(callbacks, expected_callbacks, self.crashes, f"{unverified} not verified")
        if unverified:
            fig.notices["callbacks"]["unexpected"].append(f"{unverified} with a bad signature")


# --- across hosts (issue 22) ---------------------------------------------------------------

SENTINEL_MASTER = "mymaster"
REDIS_PORT, SENTINEL_PORT, PG_PORT, PGBOUNCER_PORT, RECEIVER_PORT, SANDBOX_PORT, LB_PORT = (
    6379, 26379, 5432, 6432, 8000, 8111, 8080)
# Sentinel sees a primary down after 1 s without an answer and promotes within a few seconds.
DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS = 1000, 5000


class HostsChaos(Chaos):
    """The chaos run across hosts (`--hosts`): each service on a network namespace of its own
    (tests/hosts.py): a Redis primary, its replica and three Sentinels; PostgreSQL and PgBouncer
    (transaction pooling) in front of it; VINR's sandbox; a round-robin TCP forwarder in front of
    two receivers, so VINR's deliveries alternate between them; two workers; an `ops` host for
    `vinr-recon db upgrade` and `reconcile`. Every service process reaches Redis through the
    Sentinels (REDIS_SENTINELS) and the ledger through PgBouncer.

    The chaos, at shares of the driving: SIGKILL a worker (started again), SIGKILL the Redis
    primary (Sentinel promotes the replica; the old primary comes back as the new one's replica,
    as a process manager would restart it), cut a worker host off from PgBouncer and PostgreSQL
    for `partition_seconds`, restart PostgreSQL (a fast shutdown, then a start).

    Checked before reconciliation: every acknowledged event was applied from its webhook, no
    entry beyond its lifecycle, every entry balanced; then everything the single-host run checks.
    With REDIS_MIN_REPLICAS=0 the acknowledged events lost are measured, not a failure."""

    def __init__(self, cfg: ChaosConfig, folder: Path):
        super().__init__(cfg, folder)
        self.net = None  # tests/hosts.py Network, while the run lasts
        self.redis_nodes: dict[str, Child] = {}
        self.primary = "redis-a"  # the node the Sentinels name (as far as this run knows)
        self.pg: Child | None = None
        self.figures.lost_allowed = cfg.min_replicas == 0

    # where things are

    def host(self, name: str):
        return self.net.hosts[name]

    @property
    def redis_url(self) -> str:
        """The current primary's (the harness counts the queue there)."""
        return f"redis://{self.host(self.primary).ip}:{REDIS_PORT}/0" if self.net else ""

    @redis_url.setter
    def redis_url(self, value: str) -> None:
        pass  # the base class's; the primary is whatever the Sentinels name

    def ops(self, argv: list[str]) -> list[str]:
        return self.host("ops").command(argv)

    def execute(self) -> Figures:
        # PostgreSQL and PgBouncer run as `postgres`, who cannot enter the run's folder (0700).
        self.service_folder = Path(tempfile.mkdtemp(prefix="vinr-recon-hosts-pg-"))
        self.service_folder.chmod(0o755)
        with Network() as net:
            self.net = net
            try:
                return super().execute()
            finally:
                self.procs.stop_all()  # before the namespaces go (Network's clean-up kills what is left)
                shutil.rmtree(self.service_folder, ignore_errors=True)

    # services

    async def create_database(self) -> None:
        admin = f"postgresql://postgres@{self.host('pg').ip}:{PG_PORT}/postgres"
        self.database_url = await pg_support.create_database(admin, self.database)

    async def drop_database(self) -> None:
        pass  # the whole cluster was the run's own, in its folder

    def start_redis_node(self, name: str, replica_of: str | None = None) -> Child:
        argv = ["redis-server", "--port", str(REDIS_PORT), "--bind", self.host(name).ip, "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--repl-diskless-sync-delay", "0"]
        if replica_of:
            argv += ["--replicaof", self.host(replica_of).ip, str(REDIS_PORT)]
        self.redis_nodes[name] = child = self.procs.start(name, self.host(name).command(argv))
        return child

    def start_sentinel(self, n: int) -> Child:
        name = f"sentinel-{n}"
        conf = self.folder / f"{name}.conf"  # Sentinel rewrites its file: one each
        conf.write_text(
            f"port {SENTINEL_PORT}\nbind {self.host(name).ip}\ndaemonize no\nprotected-mode no\ndir {self.folder}\n"
            f"sentinel monitor {SENTINEL_MASTER} {self.host('redis-a').ip} {REDIS_PORT} 2\n"
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SENTINEL_MASTER} {FAILOVER_TIMEOUT_MS}\n")
        return self.procs.start(name, self.host(name).command(["redis-server", str(conf), "--sentinel"]))

    def sentinel_views(self) -> list[str | None]:
        """The primary each Sentinel names (its host's IP), None for one that does not answer."""
        import redis as sync_redis

        views = []
        for n in (1, 2, 3):
            client = sync_redis.Redis(host=self.host(f"sentinel-{n}").ip, port=SENTINEL_PORT, socket_timeout=0.5,
                                      socket_connect_timeout=0.5)
            try:
                address = client.sentinel_get_master_addr_by_name(SENTINEL_MASTER)[0]
                views.append(address.decode() if isinstance(address, bytes) else address)
            except Exception:
                views.append(None)
            finally:
                client.close()
        return views

    def sentinels_ready(self) -> bool:
        import redis as sync_redis

        for n in (1, 2, 3):
            client = sync_redis.Redis(host=self.host(f"sentinel-{n}").ip, port=SENTINEL_PORT, socket_timeout=0.5)
            try:
                state = client.sentinel_master(SENTINEL_MASTER)
                if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                    return False
            except Exception:
                return False
            finally:
                client.close()
        return True

    async def start_postgres(self) -> None:
        from pg_support import PG_BIN

        ip = self.host("pg").ip
        options = ["-p", str(PG_PORT), "-c", f"listen_addresses={ip}", "-c", "unix_socket_directories=",
                   "-c", "fsync=off", "-c", "max_connections=200"]
        self.pg = self.procs.start("postgres", self.host("pg").command(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D", str(self.pg_data), *options]))
        async def accepting() -> bool:
            try:
                await (await asyncpg.connect(f"postgresql://postgres@{ip}:{PG_PORT}/postgres", timeout=1)).close()
                return True
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
                return False  # not listening yet, or "the database system is starting up"
        await self._wait("PostgreSQL", accepting)

    def write_pgbouncer_config(self, folder: Path) -> Path:
        from pg_support import owned_by_service_user

        folder.mkdir(parents=True, exist_ok=True)
        owned_by_service_user(folder)
        (folder / "users.txt").write_text('"postgres" ""\n')
        ini = folder / "pgbouncer.ini"
        ini.write_text(f"""[databases]
* = host={self.host('pg').ip} port={PG_PORT}

[pgbouncer]
listen_addr = {self.host('pgbouncer').ip}
listen_port = {PGBOUNCER_PORT}
unix_socket_dir =
auth_type = trust
auth_file = {folder / 'users.txt'}
pool_mode = transaction
default_pool_size = 20
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
query_wait_timeout = 5
server_connect_timeout = 2
server_login_retry = 1
""")
        return ini

    async def start_services(self) -> tuple[str, str]:
        cfg, net = self.cfg, self.net
        for name in ("redis-a", "redis-b", "sentinel-1", "sentinel-2", "sentinel-3", "pg", "pgbouncer", "sandbox",
                     "lb", "receiver-1", "receiver-2", *(f"worker-{n}" for n in range(1, cfg.workers + 1)), "ops"):
            net.add(name)
        self.figures.hosts = {h.name: h.ip for h in net.hosts.values()}
        self.mailbox = Mailbox(fulfilment_secret=self.mailbox.fulfilment_secret, host=net.gateway)
        self.mailbox.start()

        # Redis: a primary, its replica, three Sentinels
        self.start_redis_node("redis-a")
        await self._wait("the Redis primary", lambda: listening(self.host("redis-a").ip, REDIS_PORT))
        self.start_redis_node("redis-b", replica_of="redis-a")
        for n in (1, 2, 3):
            self.start_sentinel(n)
        await self._wait("the Sentinels (who know the replica and each other)", self.sentinels_ready, 30)

        # PostgreSQL, then PgBouncer in front of it
        from pg_support import PrivatePostgres  # tests/: the private cluster's initdb

        server = PrivatePostgres(self.service_folder / "pg")
        server.init()
        self.pg_data = server.data
        with open(self.pg_data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {net.subnet}.0/24 trust\n")
        await self.start_postgres()
        await self.create_database()
        ini = self.write_pgbouncer_config(self.service_folder / "pgbouncer")
        self.procs.start("pgbouncer", self.host("pgbouncer").command(["runuser", "-u", "postgres", "--", "pgbouncer", str(ini)]))
        await self._wait("PgBouncer", lambda: listening(self.host("pgbouncer").ip, PGBOUNCER_PORT))

        sandbox_ip = self.host("sandbox").ip
        base = f"http://{sandbox_ip}:{SANDBOX_PORT}/v1"
        lb = f"http://{self.host('lb').ip}:{LB_PORT}"
        secret, api_key = "whsec_chaos_" + token_hex(16), "vinr_test_" + token_hex(16)
        pooled = (f"postgresql://postgres@{self.host('pgbouncer').ip}:{PGBOUNCER_PORT}/{self.database}"
                  "?pgbouncer=transaction")
        values = self.service_settings(secret, api_key, base, {
            "REDIS_URL": f"redis://{self.host('redis-a').ip}:{REDIS_PORT}/0",  # its database number; the address is the Sentinels'
            "REDIS_SENTINELS": ",".join(f"{self.host(f'sentinel-{n}').ip}:{SENTINEL_PORT}" for n in (1, 2, 3)),
            "REDIS_SENTINEL_MASTER": SENTINEL_MASTER, "REDIS_MIN_REPLICAS": str(cfg.min_replicas),
        })
        # The schema straight on PostgreSQL; every service through PgBouncer.
        self.procs.env = _children_env(set(Settings.model_fields), values)
        await self.upgrade_schema()
        self.procs.env = _children_env(set(Settings.model_fields), {**values, "DATABASE_URL": pooled})

        sandbox = self.procs.start("sandbox", self.host("sandbox").command(vinr_recon(
            "sandbox", "--host", sandbox_ip, "--port", str(SANDBOX_PORT), "--api-key", api_key,
            "--webhook-url", f"{lb}/webhooks/vinr", "--webhook-secret", secret,
            "--rate-limit", "0", "--time-scale", "0.001", "--seed", str(cfg.seed),
            "--duplicate-rate", str(cfg.duplicate_rate), "--duplicate-count", "1",
            "--reorder-delay", str(cfg.reorder_delay), "--drop-rate", str(cfg.drop_rate),
            "--old-shape-rate", str(cfg.old_shape_rate), "--snake-case-rate", str(cfg.snake_case_rate))))
        receivers = []
        for n in (1, 2):
            ip = self.host(f"receiver-{n}").ip
            self.procs.start(f"receiver-{n}", self.host(f"receiver-{n}").command(
                vinr_recon("serve", "--host", ip, "--port", str(RECEIVER_PORT))))
            receivers.append(f"{ip}:{RECEIVER_PORT}")
        self.procs.start("lb", self.host("lb").command(
            [sys.executable, str(ROOT / "tests" / "hosts.py"), "forward", f"{self.host('lb').ip}:{LB_PORT}", *receivers]))
        for n in range(1, cfg.workers + 1):
            self.start_worker(n)
        await self._wait("the sandbox", lambda: f"VINR sandbox API: {base}" in sandbox.log.read_text(errors="replace"))
        async with httpx.AsyncClient(timeout=5) as probe:
            for receiver in receivers:
                await self._wait(f"the receiver at {receiver}", lambda: receiver_ready(probe, f"http://{receiver}"))
        for child in self.workers.values():
            await self._wait(child.name, lambda c=child: "worker started" in c.log.read_text(errors="replace"))
        return base, api_key

    def start_worker(self, n: int) -> None:
        self.workers[n] = self.procs.start(f"worker-{n}", self.host(f"worker-{n}").command(
            vinr_recon("worker", "--job-timeout", str(self.cfg.job_timeout))))

    # chaos

    async def kill_redis_primary(self) -> str:
        """SIGKILL the primary; once the Sentinels name the replica, start the old one again as
        the new primary's replica (so a write can reach a replica again)."""
        victim = self.primary
        other = "redis-b" if victim == "redis-a" else "redis-a"
        child = self.redis_nodes[victim]
        self.killed.add(child.popen.pid)
        self.crashes.append([time.monotonic()] * 2)
        started = time.monotonic()
        os.killpg(child.popen.pid, signal.SIGKILL)
        await asyncio.to_thread(child.popen.wait, 10)
        promoted_ip = self.host(other).ip
        await self._wait("Sentinel's promotion of the replica",
                         lambda: all(v == promoted_ip for v in self.sentinel_views()), 30)
        promoted = time.monotonic() - started
        self.primary = other
        self.start_redis_node(victim, replica_of=other)
        return f"SIGKILL Redis primary {victim}: Sentinel promoted {other} after {promoted:.1f} s, {victim} back as its replica"

    async def isolate_redis_primary(self) -> str:
        """Split brain: the primary loses its replica and the Sentinels but not the receivers and
        workers, who keep writing to it while the Sentinels promote the replica. On healing, the
        Sentinels make the old primary a replica of the new one, and it drops what it took alone."""
        victim = self.primary
        other = "redis-b" if victim == "redis-a" else "redis-a"
        self.crashes.append([time.monotonic()] * 2)
        started = time.monotonic()
        cut = [self.host(other), *(self.host(f"sentinel-{n}") for n in (1, 2, 3))]
        fault = self.crashes[-1]
        self.host(victim).partition(peers=cut)
        try:
            promoted_ip = self.host(other).ip
            await self._wait("Sentinel's promotion of the replica",
                             lambda: all(v == promoted_ip for v in self.sentinel_views()), 30)
            promoted = time.monotonic() - started
            self.primary = other
            await asyncio.sleep(self.cfg.isolate_seconds)
        finally:
            self.host(victim).heal()
            fault[1] = time.monotonic()
        import redis as sync_redis

        def demoted() -> bool:
            client = sync_redis.Redis(host=self.host(victim).ip, port=REDIS_PORT, socket_timeout=0.5)
            try:
                return client.info("replication")["role"] == "slave"
            finally:
                client.close()
        await self._wait(f"{victim} back as a replica", demoted, 30)
        return (f"Redis primary {victim} cut off from its replica and the Sentinels (not from the service): "
                f"Sentinel promoted {other} after {promoted:.1f} s, healed {self.cfg.isolate_seconds:g} s later, "
                f"{victim} made its replica")

    async def restart_postgres(self) -> str:
        child = self.pg
        self.killed.add(child.popen.pid)
        fault = [time.monotonic()] * 2
        self.crashes.append(fault)
        started = time.monotonic()
        os.killpg(child.popen.pid, signal.SIGINT)  # PostgreSQL's fast shutdown: every session cut
        await asyncio.to_thread(child.popen.wait, 30)
        await self.start_postgres()
        fault[1] = time.monotonic()
        return f"PostgreSQL restarted (down {time.monotonic() - started:.1f} s)"

    async def partition_worker(self, n: int) -> str:
        host = self.host(f"worker-{n}")
        self.crashes.append([time.monotonic()] * 2)
        fault = self.crashes[-1]
        host.partition(peers=[self.host("pgbouncer"), self.host("pg")])
        try:
            await asyncio.sleep(self.cfg.partition_seconds)
        finally:
            host.heal()
            fault[1] = time.monotonic()
        return f"worker-{n}'s host cut off from PgBouncer and PostgreSQL for {self.cfg.partition_seconds:g} s"

    async def chaos_acts(self, progress: list[int], total: int) -> None:
        """Each act at its share of the driving, whether or not the one before has ended (the
        partition lasts `partition_seconds`, a failover a few)."""
        async def act(share: float, name: str) -> None:
            while progress[0] < share * total:
                await asyncio.sleep(0.02)
            at = f"at {progress[0] / total:.0%} of the driving"
            if name == "worker":
                self.kill_worker(1)
                what = "SIGKILL worker-1 (started again)"
            elif name == "redis":
                what = await (self.isolate_redis_primary() if self.cfg.redis_fault == "isolate" else self.kill_redis_primary())
            elif name == "partition":
                what = await self.partition_worker(self.cfg.workers)
            else:
                what = await self.restart_postgres()
            self.figures.chaos.append(f"{what} {at}")

        await asyncio.gather(act(0.1, "worker"), act(0.25, "redis"), act(0.4, "partition"), act(0.6, "postgres"))

    # before reconciliation

    async def reconcile(self) -> None:
        """First the ledger as the webhooks alone left it, then the run."""
        saved, self.figures = self.figures, Figures(invoices=self.cfg.invoices)
        try:
            await self.measure(self._api)
            before = self.figures
        finally:
            self.figures = saved
        failures = []
        if before.acknowledged_lost and not saved.lost_allowed:
            failures.append(f"{len(before.acknowledged_lost)} acknowledged events not applied from their webhook, "
                            f"e.g. {before.acknowledged_lost[:3]}")
        if before.extra_entries:
            failures.append(f"{len(before.extra_entries)} entries beyond the lifecycle: {before.extra_entries[:3]}")
        if before.unbalanced_entries or any(before.trial_balance.values()):
            failures.append(f"{before.unbalanced_entries} unbalanced entries, trial balance {before.trial_balance}")
        saved.before_reconcile = {
            "acknowledged_lost": len(before.acknowledged_lost), "failures": failures,
            "summary": (f"{before.events_acknowledged} events acknowledged, {len(before.acknowledged_lost)} of them not "
                        f"applied from their webhook (lost), {len(before.extra_entries)} entries beyond the lifecycle, "
                        f"{len(before.mismatched)} invoices behind VINR (their webhooks dropped on purpose)"),
        }
        await super().reconcile()

    async def settle(self, client: httpx.AsyncClient) -> None:
        self._api = client
        await super().settle(client)


def summary(run: dict[str, Any]) -> dict[str, Any]:
    """What the table shows of one run (`Chaos.reconcile_run`)."""
    doc = run["json"]
    return {"exit": run["exit"], **{k: doc.get(k) for k in (
        "id", "status", "counts", "eventsBackfilled", "correctionsPosted", "invoicesChecked")}}


def drifted(run: dict[str, Any]) -> bool:
    """A run that owes a drift alert (ledger/outbox.py `for_run`, as the contract's alerts say)."""
    return run.get("status") != "completed" or any((run.get("counts") or {}).values())


def ledger_stage(net: Counter, voided: bool) -> int:
    """How far along its lifecycle the ledger holds an invoice, from its account nets (and
    whether its last change of recognised revenue was a void): 0 draft (nothing booked), 1 open
    (receivable), 2 uncollectible (bad debt), 3 paid or void (neither: both final). VINR's own
    ranks (draft, open, uncollectible, paid | void) in the same order."""
    if net["accounts_receivable"] > 0:
        return 1
    if net["bad_debt"] > 0:
        return 2
    # Revenue kept with nothing owed is paid, or void after a payment; all zero is a draft,
    # or void before any payment.
    return 3 if net["revenue"] or voided else 0


VERSION = re.compile(r":v(\d+):\d+:[a-z_]+$")  # journal_entries.idempotency_key: {invoice}:v{version}:{n}:{kind}
UNDOING = ("payment_reversal", "credit_reversal", "credit_applied_reversal")
RECOGNITION = ("finalize", "void", "adjustment")  # ledger/posting.py: the kinds that move recognised revenue


def regressions(entries: list, lines: dict[int, list]) -> tuple[list[str], Counter, set[str]]:
    """Every ledger change (the entries of one position version) that moved an invoice
    backwards: amountPaid down, or an earlier stage than before, or an entry that undoes a
    payment or credit. In the chaos world VINR never moves backwards, so each is drift the
    service invented. Also: how many per reconciliation run, and the invoices a run moved to
    paid or void. `lines[entry id]` is that entry's postings."""
    changes: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for e in entries:
        changes[e["invoice_id"]][int(VERSION.search(e["idempotency_key"]).group(1))].append(e)
    found, per_run, final_by_run = [], Counter(), set()
    for invoice_id, versions in sorted(changes.items()):
        net, paid, stage, held = Counter(), 0, 0, 0  # paid and stage: the most reached; held: the last
        voided = False
        for version in sorted(versions):
            group = versions[version]
            for e in group:
                for p in lines.get(e["id"], ()):
                    net[p["account"]] += p["amount"] if p["direction"] == "debit" else -p["amount"]
                if e["kind"] in RECOGNITION:
                    voided = e["kind"] == "void"
            now_paid, now_stage = net["vinr_clearing"], ledger_stage(net, voided)
            undoing = [e["kind"] for e in group if e["kind"] in UNDOING]
            by = group[0]
            who = f"run {by['run_id']}" if by["run_id"] is not None else f"{by['source']} {by['event_id']}"
            if now_paid < paid or now_stage < stage or undoing:
                found.append(f"{invoice_id} v{version} by {who}: amountPaid {paid} -> {now_paid}, stage {stage} -> "
                             f"{now_stage} ({', '.join(e['kind'] for e in group)})")
                if by["run_id"] is not None:
                    per_run[by["run_id"]] += 1
            if by["run_id"] is not None and now_stage == 3 and held < 3:
                final_by_run.add(invoice_id)
            paid, stage, held = max(paid, now_paid), max(stage, now_stage), now_stage
    return found, per_run, final_by_run


def expected_nets(inv: dict) -> dict[str, int]:
    """Each account's net (debits - credits) for one invoice as VINR states it (contract 3 and 6):
    a voided invoice leaves no revenue, what it had collected (and the credit it had used) is the
    customer's credit again; the credit applied at finalize (`appliedBalance`) is credit used."""
    status, total, paid, due = inv["status"], inv["total"], inv["amountPaid"], inv["amountDue"]
    applied = inv.get("appliedBalance") or 0
    if status == "draft":
        return {}
    out = Counter({"vinr_clearing": paid})
    if status == "void":
        out["customer_credit"] -= paid  # used `applied`, then owed back `paid + applied`
    else:
        out["revenue"] -= total
        out["customer_credit"] += applied
        if total < 0:  # a credit note: revenue down by the credit, owed to the customer
            out["customer_credit"] = total
    if status == "open":
        out["accounts_receivable"] += due
    if status == "uncollectible":
        out["bad_debt"] += due
    return {a: v for a, v in out.items() if v}


ALERT_INVOICE = re.compile(r"Invoice:?\*?:?\s.*?\((inv_[A-Za-z0-9_]+)\)")
ALERT_ATTEMPTS = re.compile(r"Attempts:?\*?:?\s*(\d+)")
DRIFT_RUN = re.compile(r"Reconciliation run (\d+)")


def alert_key(subject: str, text: str, *, plain: bool) -> tuple:
    """What an alert is about: (invoice id, attempt count) for a payment failure, ("run", id) for
    drift, ("uncollectible", invoice id) for a write-off."""
    subject = subject.strip()
    if subject.startswith("Uncollectible"):
        inv = ALERT_INVOICE.search(text)
        return ("uncollectible", inv.group(1) if inv else None)
    if subject.startswith(("Payment failed", "Authentication required")):  # the latter: a 3-D Secure attempt
        inv, attempts = ALERT_INVOICE.search(text), ALERT_ATTEMPTS.search(text)
        return (inv.group(1) if inv else None, int(attempts.group(1)) if attempts else None)
    run = DRIFT_RUN.search(subject)
    return ("run", int(run.group(1)) if run else None) if run else ("other", subject)


@dataclass(frozen=True)
class Arrival:
    key: Any  # what the notice is about
    at: float  # time.monotonic() when the peer received it
    copy: str  # equal for two arrivals of one notice (Message-ID, idempotency key, text)


# A worker killed (or cut off from the database) between a send and the commit of its `sent`
# leaves the notice pending, and the next try sends it again (delivery is at least once:
# ledger/outbox.py, worker/notices.py). Such a second arrival is a redelivery, not a second alert,
# when it is an identical copy of the first (same Message-ID or idempotency key, by which the peer
# recognises it) and a fault of the run's own making was under way within this many seconds
# after the first arrival, before the second.
CRASH_WINDOW = 10.0


def tally(arrivals: list[Arrival], expected: set, crashes: list[list[float]], detail: str) -> dict[str, Any]:
    by_key: dict[Any, list[Arrival]] = defaultdict(list)
    for arrival in sorted(arrivals, key=lambda a: a.at):
        by_key[arrival.key].append(arrival)
    duplicates, redelivered = [], []
    for key, copies in by_key.items():
        for first, again in zip(copies, copies[1:]):
            crash = any(start <= min(first.at + CRASH_WINDOW, again.at) and end >= first.at - 0.5
                        for start, end in crashes)
            (redelivered if crash and again.copy == copies[0].copy else duplicates).append(str(key))
    return {
        "expected": len(expected), "received": len(arrivals),
        "missing": sorted(map(str, expected - set(by_key))),
        "unexpected": sorted(map(str, set(by_key) - expected)),
        "duplicates": sorted(duplicates),
        "redelivered": sorted(redelivered),
        "detail": detail,
    }


async def _cleanup(chaos: Chaos) -> None:
    chaos.procs.stop_all()
    chaos.mailbox.stop()
    try:
        await chaos.drop_database()
    except Exception as exc:  # reported, never hiding the run's own outcome
        print(f"clean-up: database {chaos.database} not dropped: {exc}", file=sys.stderr)


def logs(chaos: Chaos, lines: int = 40) -> str:
    return "\n".join(f"--- {c.name} (pid {c.popen.pid})\n{c.tail(lines)}" for c in chaos.procs.children)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invoices", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker-kills", type=int, default=3)
    parser.add_argument("--redis-restarts", type=int, default=None, help="default 1, and 0 with --live")
    parser.add_argument("--job-timeout", type=float, default=30.0,
                        help="the workers' --job-timeout: a killed worker's jobs run again this + 10 s later")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--settle-timeout", type=float, default=300.0,
                        help="seconds to wait for delivery to settle, and again for the notices")
    parser.add_argument("--live", action="store_true",
                        help="the live scenario: VINR's steps spread over --live-seconds, reconciliation running "
                             "again and again meanwhile, no run after the drain")
    parser.add_argument("--live-seconds", type=float, default=120.0)
    parser.add_argument("--reconcile-pause", type=float, default=1.0, help="seconds between two live runs")
    parser.add_argument("--list-latency", type=float, default=0.5,
                        help="live: seconds an invoice list page takes to arrive after the sandbox read it")
    parser.add_argument("--history", type=int, default=0,
                        help="invoices VINR holds before the service starts, with no events listed")
    parser.add_argument("--hosts", action="store_true",
                        help="across hosts (issue 22, as root): every service on a network namespace of its own, "
                             "Redis with a replica and three Sentinels, PgBouncer, two receivers; a Redis primary "
                             "SIGKILLed, a worker host cut off from the database, PostgreSQL restarted")
    parser.add_argument("--min-replicas", type=int, default=1, help="--hosts: the receivers' REDIS_MIN_REPLICAS")
    parser.add_argument("--redis-fault", choices=("kill", "isolate"), default="kill",
                        help="--hosts: SIGKILL the Redis primary, or cut it off from its replica and the Sentinels "
                             "but not from the service (split brain) until --isolate-seconds after the promotion")
    parser.add_argument("--isolate-seconds", type=float, default=3.0)
    parser.add_argument("--partition-seconds", type=float, default=10.0,
                        help="--hosts: how long a worker host is cut off from the database")
    parser.add_argument("--keep", action="store_true", help="keep the logs (the database is dropped anyway)")
    args = parser.parse_args()
    if args.workers < 2 and args.worker_kills:
        parser.error("killing a worker needs at least 2 workers")
    redis_restarts = args.redis_restarts if args.redis_restarts is not None else 0 if args.live else 1
    cfg = ChaosConfig(invoices=args.invoices, workers=args.workers, seed=args.seed, worker_kills=args.worker_kills,
                      redis_restarts=redis_restarts, job_timeout=args.job_timeout, log_level=args.log_level,
                      settle_timeout=args.settle_timeout, live=args.live, live_seconds=args.live_seconds,
                      reconcile_pause=args.reconcile_pause, list_latency=args.list_latency, keep=args.keep,
                      hosts=args.hosts, min_replicas=args.min_replicas, partition_seconds=args.partition_seconds,
                      redis_fault=args.redis_fault, isolate_seconds=args.isolate_seconds, history=args.history)
    if args.hosts and args.live:
        parser.error("--hosts runs the usual scenario, not --live")
    folder = Path(tempfile.mkdtemp(prefix="vinr-recon-chaos-"))
    chaos = HostsChaos(cfg, folder) if args.hosts else Chaos(cfg, folder)
    try:
        figures = chaos.execute()
    except (DemoFailure, httpx.HTTPError) as exc:
        print(f"chaos run failed: {str(exc) or repr(exc)}\n{logs(chaos)}\nlogs in {folder}", file=sys.stderr)
        return 1
    print(figures.table())
    if args.keep or not figures.passed:
        print(f"logs in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if figures.passed else 1


if __name__ == "__main__":
    sys.exit(main())
