"""A reconciliation run at scale, against the sandbox over real HTTP (issue 6, "Cost").

    .venv/bin/python bench/reconcile.py [--sizes 10000 100000 | --quick] [--database-url postgresql://...]
                                        [--profile DIR] [--py-spy DIR] [--keep]

For each size N: the sandbox runs as its own process (`vinr-recon sandbox --rate-limit 0
--preload N`, no events), so its memory is not the reconciler's. The bench pages through its
invoices and builds a ledger that agrees with VINR for 90 % of them and has drifted for 10 %:
a third missing, a third booked as `open` where VINR says paid, void or uncollectible (the
state before the one a lost webhook would have brought), a third booked with a smaller partial
payment. The ledger is written in bulk, with the posting rule `ledger.posting.post` computing
exactly the rows `ledger.book.apply_snapshot` would write for a first snapshot. Then a
reconciliation runs in a child process of its own (peak RSS is the reconciler's), and a second
one after it, which must find nothing.

Correctness (exit status 1 if broken): the first run's findings, row by row, are the drift
injected; every invoice's position equals VINR's afterwards, the books balance, every
correction entry names the run; the second run finds nothing. Speed and memory are reported
against the issue's targets, never failed on.

The minimum number of API requests of a run is the issue's formula (issue 19), plus the events
pages the run also reads before it sweeps:
    ceil(invoices created in the window / 100)              list pages of /invoices (at least 1)
  + sum over open, uncollectible, draft of
    ceil(VINR's invoices in that status created before the window / 100)   status-filtered pages
  + invoices that changed without the ledger hearing of it  one GET each: a fresh answer for a
    difference a list showed, or the fetch of an invoice the ledger holds not final, created
    before the window, that VINR made final (no list shows it)
  + max(1, ceil(events in the window / 100))                list pages of /events (none here)
A first run has no window (no watermark): every invoice is in it, no status list is read. The
bench knows what it changed: on the first run the third term is the drift the ledger holds (a
stale status, a smaller payment; a missing invoice is none of the ledger's), on the second the
positions the first run left differing from VINR (it changes nothing between the runs: 0).

The reconciliation runs unpaced (`VinrClient(rate=0)`) against a sandbox without a rate limit;
the projected wall time at VINR's live rate (100 requests/s, `VINR_API_RATE`'s default) is
max(the measured time, requests / 100 s): pacing spaces the requests, and the work on one page
overlaps the wait for the next.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from secrets import token_hex

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # pg_support: a scratch database

import pg_support  # noqa: E402

VENV_BIN = Path(sys.executable).parent
PAGE = 100
DRIFT_SHARE = 0.10
SEED = 1
CHUNK = 5_000                     # rows per executemany call
TARGET_RATIO = 1.05               # requests <= 1.05 x minimum
TARGET_RSS_GROWTH = 0.20          # peak RSS at the largest size within 20 % of the smallest
TARGET_SECONDS_100K = 120.0       # 100,000 invoices in under 2 minutes
LIVE_RATE = 100.0                 # VINR's live rate limit, requests per second (VINR_API_RATE's default)
SANDBOX_START_TIMEOUT = 300.0
NOT_FINAL = ("draft", "open", "uncollectible")


# --- The sandbox, in a process of its own ----------------------------------------------------------


@dataclass
class Sandbox:
    process: subprocess.Popen
    base_url: str
    api_key: str
    log: Path


def start_sandbox(size: int, workdir: Path) -> Sandbox:
    """`vinr-recon sandbox` with `size` invoices preloaded; returns once its API answers."""
    import httpx

    from vinr.sandbox.serving import bind

    key = "vinr_test_bench_" + token_hex(12)
    probe = bind("127.0.0.1", 0)  # a free port (IPPROTO_TCP socket), released for the sandbox
    port = probe.getsockname()[1]
    probe.close()
    log = workdir / f"sandbox-{size}.log"
    env = {k: v for k, v in os.environ.items() if k != "VINR_API_KEY"}
    env["LOG_LEVEL"] = "WARNING"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(VENV_BIN / "vinr-recon"), "sandbox", "--host", "127.0.0.1", "--port", str(port),
             "--rate-limit", "0", "--preload", str(size), "--seed", str(SEED), "--api-key", key],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
            start_new_session=True,  # its own process group: stopped as a whole, never by Ctrl-C halfway
        )
    sandbox = Sandbox(process, f"http://127.0.0.1:{port}/v1", key, log)
    try:
        deadline = time.monotonic() + SANDBOX_START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the sandbox exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the sandbox did not answer in time")
            try:
                answer = httpx.get(f"{sandbox.base_url}/invoices", params={"limit": 1},
                                   headers={"X-Api-Key": key}, timeout=2.0)
                if answer.status_code == 200:
                    return sandbox
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    except BaseException:
        stop(process)
        raise


def stop(process: subprocess.Popen) -> None:
    """End `process` and its group: SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


async def fetch_invoices(sandbox: Sandbox) -> list:
    """Every invoice, paged through the API, without its lines (which the ledger never reads; its
    metadata stays: the ledger keeps `metadata.accountManager`)."""
    from vinr.client import VinrClient
    from vinr.events import Lines

    invoices = []
    async with VinrClient(sandbox.base_url, sandbox.api_key) as client:
        async for invoice in client.iter_invoices():
            invoices.append(invoice.model_copy(update={"lines": Lines()}))
    return invoices


# --- The drift ------------------------------------------------------------------------------------


@dataclass
class Drift:
    """What the ledger holds instead of VINR's answer: None = missing, else the snapshot booked."""

    booked: dict[str, object] = field(default_factory=dict)
    kind: dict[str, str] = field(default_factory=dict)  # invoice id -> missing | status | amount

    def injected(self) -> Counter:
        return Counter(self.kind.values())


def plan_drift(invoices: list, seed: int = SEED) -> Drift:
    """10 % of the invoices drifted, a third of each kind; drafts never (a draft is no drift)."""
    rng = random.Random(seed)
    total = int(len(invoices) * DRIFT_SHARE)
    wanted = {"missing": total // 3, "status": total // 3}
    wanted["amount"] = total - 2 * (total // 3)

    # A smaller partial payment: open invoices that have been partly paid.
    amount_pool = [inv for inv in invoices if inv.status == "open" and 2 <= inv.amount_paid < inv.total]
    # Booked as open where VINR has moved on (credit notes, paid at once with a negative total, left out).
    status_pool = [inv for inv in invoices if inv.status in ("paid", "void", "uncollectible") and inv.total > 0]
    drift = Drift()
    for kind, pool in (("amount", amount_pool), ("status", status_pool)):
        if len(pool) < wanted[kind]:
            raise SystemExit(f"only {len(pool)} invoices can take {kind} drift, {wanted[kind]} wanted")
        for inv in rng.sample(pool, wanted[kind]):
            drift.kind[inv.id] = kind
            drift.booked[inv.id] = stale_snapshot(inv) if kind == "status" else smaller_payment(inv)
    missing_pool = [inv for inv in invoices if inv.status != "draft" and inv.id not in drift.kind]
    for inv in rng.sample(missing_pool, wanted["missing"]):
        drift.kind[inv.id] = "missing"
        drift.booked[inv.id] = None
    return drift


def stale_snapshot(inv):
    """The invoice as it stood while still open: before the payment, the void or the write-off."""
    paid = 0 if inv.status == "paid" else inv.amount_paid
    return inv.model_copy(update={"status": "open", "amount_paid": paid, "amount_due": inv.total - paid,
                                  "paid_at": None, "voided_at": None})


def smaller_payment(inv):
    paid = inv.amount_paid // 2
    return inv.model_copy(update={"amount_paid": paid, "amount_due": inv.total - paid})


def expected_findings(inv, drift: Drift) -> list[tuple]:
    """(invoice, category, field, ledger value, VINR value) per difference, from the issue's categories."""
    if inv.id not in drift.kind:
        return []
    booked = drift.booked[inv.id]
    if booked is None:
        return [(inv.id, "missing_in_ledger", "status", None, inv.status)]
    found = []
    if booked.status != inv.status:
        found.append((inv.id, "status_mismatch", "status", booked.status, inv.status))
    for name, attr in (("total", "total"), ("amountPaid", "amount_paid"), ("amountDue", "amount_due")):
        ours, theirs = getattr(booked, attr), getattr(inv, attr)
        if ours != theirs:
            found.append((inv.id, "amount_mismatch", name, str(ours), str(theirs)))
    return found


# --- The ledger, in bulk --------------------------------------------------------------------------


def ledger_rows(invoices: list, drift: Drift, now: datetime, first_entry_id: int = 1) -> tuple[list, list, list]:
    """The rows `apply_snapshot(conn, snapshot, source="webhook", event_at=snapshot.created)` writes
    for each booked snapshot on an empty ledger: one position, its entries and their postings
    (entry ids from `first_entry_id` on)."""
    from ledger.book import entry_key, position_values
    from ledger.posting import Position, post

    position_rows, entry_rows, posting_rows = [], [], []
    for inv in invoices:
        booked = drift.booked.get(inv.id, inv)
        if booked is None:
            continue
        outcome = post(Position(invoice_id=booked.id), booked, event_at=booked.created)
        new = outcome.position
        # The writer's own column list and entry key: a column the ledger gains is written here too.
        position_rows.append({"invoice_id": booked.id, **position_values(new), "updated_at": now})
        effective = datetime.fromtimestamp(booked.created, UTC) if booked.created else now
        for i, entry in enumerate(outcome.entries):
            entry_id = first_entry_id + len(entry_rows)
            entry_rows.append({
                "id": entry_id, "idempotency_key": entry_key(booked.id, 0, i, entry), "kind": entry.kind,
                "invoice_id": booked.id, "currency": entry.currency, "source": "webhook", "event_id": None,
                "run_id": None, "effective_at": effective, "recorded_at": now,
            })
            posting_rows += [
                {"entry_id": entry_id, "account": line.account, "direction": line.direction,
                 "amount": line.amount, "currency": entry.currency}
                for line in entry.lines
            ]
    return position_rows, entry_rows, posting_rows


async def build_ledger(url: str, invoices: list, drift: Drift) -> dict:
    """Write the ledger in one transaction, executemany in chunks; returns the row counts."""
    from sqlalchemy import text

    from ledger.book import entries, positions, postings
    from ledger.db import create_engine

    rows = ledger_rows(invoices, drift, datetime.now(UTC))
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for table, table_rows in zip((positions, entries, postings), rows, strict=True):
                for start in range(0, len(table_rows), CHUNK):
                    await conn.execute(table.insert(), table_rows[start:start + CHUNK])
            if conn.dialect.name == "postgresql":
                # Entry ids were given explicitly: move the sequence past them for the run's entries.
                await conn.execute(text("SELECT setval(pg_get_serial_sequence('journal_entries', 'id'), "
                                        "(SELECT max(id) FROM journal_entries))"))
    finally:
        await engine.dispose()
    return {"positions": len(rows[0]), "entries": len(rows[1]), "postings": len(rows[2])}


async def copy_ledger(url: str, invoices: list, drift: Drift, chunk: int = 20_000) -> dict:
    """The same rows as `build_ledger`, into PostgreSQL by COPY (asyncpg), a chunk of invoices at
    a time so that only one chunk's rows are held; then VACUUM ANALYZE, as autovacuum would have
    done to a live ledger (without it the planner knows nothing of the tables). Returns the counts."""
    import asyncpg

    from ledger.book import entries, positions, postings

    now = datetime.now(UTC)
    counts = {"positions": 0, "entries": 0, "postings": 0}
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with conn.transaction():
            for start in range(0, len(invoices), chunk):
                rows = ledger_rows(invoices[start:start + chunk], drift, now, first_entry_id=counts["entries"] + 1)
                for name, table, table_rows in zip(counts, (positions, entries, postings), rows, strict=True):
                    if table_rows:
                        columns = list(table_rows[0])
                        await conn.copy_records_to_table(
                            table.name, records=[tuple(row[c] for c in columns) for row in table_rows],
                            columns=columns)
                        counts[name] += len(table_rows)
            await conn.execute("SELECT setval(pg_get_serial_sequence('journal_entries', 'id'), "
                               "(SELECT max(id) FROM journal_entries))")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return counts


async def bulk_matches_book(invoices: list, drift: Drift, workdir: Path) -> list[str]:
    """Differences between the bulk rows and what `apply_snapshot` writes, on a sample of every
    kind of invoice and drift, each written both ways to a SQLite ledger of its own (empty: none)."""
    from sqlalchemy import select

    from ledger.book import apply_snapshot, entries, positions, postings
    from ledger.db import create_engine
    from ledger.migrate import upgrade_async

    by_kind: dict[tuple, list] = {}
    for inv in invoices:
        by_kind.setdefault((inv.status, inv.total > 0, drift.kind.get(inv.id)), []).append(inv)
    sample = [inv for group in by_kind.values() for inv in group[:20]]
    ledgers = {}
    for way in ("book", "bulk"):
        url = f"sqlite:///{workdir / f'sample-{way}-{uuid.uuid4().hex[:8]}.db'}"
        await upgrade_async(url)
        if way == "bulk":
            await build_ledger(url, sample, drift)
        else:
            engine = create_engine(url)
            try:
                async with engine.begin() as conn:
                    for inv in sample:
                        booked = drift.booked.get(inv.id, inv)
                        if booked is not None:
                            await apply_snapshot(conn, booked, source="webhook", event_at=booked.created)
            finally:
                await engine.dispose()
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                held = {tuple(r._mapping[c] for c in positions.c.keys() if c != "updated_at")
                        for r in await conn.execute(select(positions))}
                e, p = entries.c, postings.c
                booked_entries = set(map(tuple, await conn.execute(
                    select(e.idempotency_key, e.kind, e.invoice_id, e.currency, e.source, e.event_id, e.run_id,
                           e.effective_at, p.account, p.direction, p.amount, p.currency)
                    .join_from(entries, postings, p.entry_id == e.id)
                )))
        finally:
            await engine.dispose()
        ledgers[way] = (held, booked_entries)
    problems = []
    for name, n in (("positions", 0), ("entries and postings", 1)):
        if ledgers["book"][n] != ledgers["bulk"][n]:
            problems.append(f"bulk {name} differ from apply_snapshot's: "
                            f"{sorted(ledgers['bulk'][n] ^ ledgers['book'][n], key=str)[:2]}")
    return problems


# --- The reconciliation, in a child process -------------------------------------------------------


def child(database_url: str, base_url: str) -> None:
    """One `Reconciler.run()`; prints its report, wall and CPU seconds and peak RSS as JSON."""
    from vinr_recon.logging import configure_logging

    configure_logging("INFO", json=True)

    from ledger.db import create_engine
    from reconcile.run import Reconciler
    from vinr.client import RetryPolicy, VinrClient

    async def main() -> dict:
        engine = create_engine(database_url)
        # Unpaced (rate 0, the sandbox has no limit either): the live rate is projected, not waited.
        client = VinrClient(base_url, os.environ["BENCH_VINR_API_KEY"], retry=RetryPolicy(), rate=0)
        try:
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            cpu, started = time.process_time(), time.perf_counter()
            report = await Reconciler(engine, client).run()
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        finally:
            await client.aclose()
            await engine.dispose()
        return {**report.as_dict(), "unresolved": report.unresolved, "seconds": seconds, "cpu": cpu,
                "rss_before_kib": rss_before, "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "vm_hwm_kib": _vm_hwm()}

    print(json.dumps(asyncio.run(main())), flush=True)


def _vm_hwm(pid: int | str = "self") -> int:
    """A process image's own peak RSS in KiB (Linux); of this one, a cross-check of ru_maxrss."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def reconcile(database_url: str, sandbox: Sandbox, log: Path, profile: Path | None, sampler: Path | None) -> dict:
    # Started by a shell that forks it: Linux carries a process's RSS high-water mark over
    # fork and exec into ru_maxrss, so a child forked from this process (which holds every
    # invoice) would report this process's RSS as its own peak. The shell is small.
    command = ["/bin/sh", "-c", '"$@"; exit $?', "sh"]
    if sampler:  # py-spy's collapsed stacks, every thread (SQLite works in aiosqlite's)
        command += [os.environ.get("PY_SPY") or shutil.which("py-spy") or "py-spy", "record", "--threads", "--idle",
                    "--rate", "200", "--format", "raw", "--output", str(sampler), "--"]
    command += [sys.executable]
    if profile:
        command += ["-m", "cProfile", "-o", str(profile)]
    command += [__file__, "--child", database_url, sandbox.base_url]
    env = {**os.environ, "BENCH_VINR_API_KEY": sandbox.api_key}
    with log.open("w") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            out, _ = process.communicate()
        except BaseException:
            stop(process)  # the whole group: the shell and the reconciler under it
            raise
    if process.returncode:
        raise SystemExit(f"the reconciliation failed ({process.returncode}):\n{log.read_text()[-3000:]}")
    return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))


# --- Checks ----------------------------------------------------------------------------------------


async def check_first_run(url: str, run: dict, invoices: list, drift: Drift) -> tuple[list[str], dict[str, str]]:
    """What is wrong with the first run and the ledger it left (empty: nothing), and the
    positions it left (invoice id -> `held_values`)."""
    from sqlalchemy import func, select

    from ledger.book import entries, positions, trial_balance
    from ledger.db import create_engine
    from ledger.tables import Finding

    findings = Finding.__table__
    problems = []
    expected = Counter(f for inv in invoices for f in expected_findings(inv, drift))
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(findings).where(findings.c.run_id == run["id"]))
            found, uncorrected = Counter(), 0
            for r in rows:
                found[(r.invoice_id, r.category, r.field, r.ledger_value, r.vinr_value)] += 1
                uncorrected += not r.corrected
            held = {r.invoice_id: (r.status, r.currency, r.total, r.amount_paid, r.amount_due)
                    for r in await conn.execute(select(positions))}
            balances = await trial_balance(conn)
            by_run = await conn.scalar(select(func.count()).select_from(entries).where(
                entries.c.run_id == run["id"], entries.c.source == "reconciliation"))
            stray = await conn.scalar(select(func.count()).select_from(entries).where(
                entries.c.source == "reconciliation", entries.c.run_id.is_distinct_from(run["id"])))
    finally:
        await engine.dispose()

    if run["status"] != "completed" or not run["matches"]:
        problems.append(f"run ended {run['status']} with matches={run['matches']}: {run['message']}")
    if run["invoicesChecked"] != len(invoices):
        problems.append(f"checked {run['invoicesChecked']} invoices of {len(invoices)}")
    if found != expected:
        extra, lacking = found - expected, expected - found
        problems.append(f"findings differ from the drift: {sum(extra.values())} unexpected "
                        f"(e.g. {list(extra)[:3]}), {sum(lacking.values())} not found (e.g. {list(lacking)[:3]})")
    counted = {c: n for c, n in run["counts"].items() if n}
    if counted != dict(Counter(f[1] for f in expected.elements())):
        problems.append(f"counts {counted} differ from the drift")
    if uncorrected:
        problems.append(f"{uncorrected} findings left uncorrected")
    if by_run != run["correctionsPosted"] or stray:
        problems.append(f"{by_run} entries name the run, {run['correctionsPosted']} corrections reported, "
                        f"{stray} reconciliation entries name no run or another")
    wrong = [inv.id for inv in invoices if held.get(inv.id) != held_values(inv)]
    if wrong:
        problems.append(f"{len(wrong)} positions differ from VINR after the run, e.g. {wrong[:3]}")
    for currency in {c for _, c in balances}:
        debits = sum(d for (_, c), (d, _) in balances.items() if c == currency)
        credits = sum(k for (_, c), (_, k) in balances.items() if c == currency)
        if debits != credits:
            problems.append(f"the books do not balance in {currency}: {debits} debits, {credits} credits")
    return problems, held


def check_second_run(run: dict) -> list[str]:
    problems = []
    if run["status"] != "completed" or not run["matches"]:
        problems.append(f"second run ended {run['status']} with matches={run['matches']}: {run['message']}")
    if any(run["counts"].values()) or run["correctionsPosted"]:
        problems.append(f"second run found {run['counts']} and posted {run['correctionsPosted']}")
    return problems


def minimum_requests(invoices: list, window_start: int | None, events: int = 0, unheard: int = 0) -> dict:
    """The issue's formula for a run with this window (see the module's docstring), plus the
    events pages; `unheard`: the ledger's invoices that changed at VINR without its hearing."""
    if window_start is None:
        swept, before = invoices, Counter()
    else:
        swept = [inv for inv in invoices if (inv.created or 0) >= window_start]
        before = Counter(inv.status for inv in invoices
                         if inv.status in NOT_FINAL and (inv.created or 0) < window_start)
    pages = max(1, math.ceil(len(swept) / PAGE))
    status_pages = {s: math.ceil(before[s] / PAGE) for s in NOT_FINAL}
    event_pages = max(1, math.ceil(events / PAGE))
    return {"swept": len(swept), "invoice_pages": pages, "before": {s: before[s] for s in NOT_FINAL},
            "status_pages": status_pages, "unheard": unheard, "event_pages": event_pages,
            "total": pages + sum(status_pages.values()) + unheard + event_pages}


def unheard_changes(held: dict[str, tuple], invoices: list) -> int:
    """The ledger's invoices (`held`: invoice id -> `held_values`) that VINR holds otherwise:
    changed without the ledger hearing of it. One request each beyond the lists: a fresh answer
    for a difference a list showed, or the fetch of one no list shows (made final at VINR)."""
    return sum(1 for inv in invoices if inv.id in held and held[inv.id] != held_values(inv))


def held_values(inv) -> tuple:
    """What the bench compares of a position, and of VINR's invoice."""
    return (inv.status, inv.currency, inv.total, inv.amount_paid, inv.amount_due)


# --- The databases ---------------------------------------------------------------------------------


@dataclass
class Database:
    url: str
    drop: str | None = None       # the private PostgreSQL database to drop afterwards
    admin_url: str | None = None


def new_database(option: str | None, workdir: Path, size: int) -> Database:
    if not option:
        return Database(f"sqlite:///{workdir / f'ledger-{size}.db'}")
    if not option.startswith(("postgresql://", "postgres://")):
        raise SystemExit("--database-url: a postgresql:// URL (SQLite is the default, in a temporary folder)")
    name = f"vinr_bench_recon_{uuid.uuid4().hex[:12]}"
    admin = option.replace("postgres://", "postgresql://", 1)
    return Database(asyncio.run(pg_support.create_database(admin, name)), drop=name, admin_url=admin)


def drop_database(db: Database) -> None:
    if db.drop:
        asyncio.run(pg_support.drop_database(db.admin_url, db.drop))


# --- One size --------------------------------------------------------------------------------------


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure(size: int, args, workdir: Path) -> dict:
    from ledger.migrate import upgrade

    note(f"[{size:,}] starting the sandbox with {size:,} invoices")
    started = time.perf_counter()
    sandbox = start_sandbox(size, workdir)
    db = None
    try:
        note(f"[{size:,}] sandbox up in {time.perf_counter() - started:.1f} s; fetching its invoices")
        started = time.perf_counter()
        invoices = asyncio.run(fetch_invoices(sandbox))
        if len(invoices) != size:
            raise SystemExit(f"the sandbox lists {len(invoices)} invoices, {size} preloaded")
        drift = plan_drift(invoices)
        build_problems = asyncio.run(bulk_matches_book(invoices, drift, workdir))
        if build_problems:
            raise SystemExit("the bulk ledger is not what apply_snapshot writes: " + "; ".join(build_problems))
        db = new_database(args.database_url, workdir, size)
        upgrade(db.url)
        fetched = time.perf_counter() - started
        started = time.perf_counter()
        rows = asyncio.run((copy_ledger if db.drop else build_ledger)(db.url, invoices, drift))
        note(f"[{size:,}] fetched in {fetched:.1f} s, ledger built in {time.perf_counter() - started:.1f} s "
             f"({rows['positions']:,} positions, {rows['entries']:,} entries, {rows['postings']:,} postings); "
             f"drift {dict(drift.injected())}; reconciling")

        profile = args.profile and Path(args.profile) / f"reconcile-{size}-first.prof"
        sampler = args.py_spy and Path(args.py_spy) / f"reconcile-{size}-first.txt"
        first = reconcile(db.url, sandbox, workdir / f"reconcile-{size}-first.log", profile, sampler)
        problems, held = asyncio.run(check_first_run(db.url, first, invoices, drift))
        note(f"[{size:,}] first run: {first['seconds']:.1f} s, {first['apiRequests']} requests, "
             f"{first['counts']}; reconciling again")
        profile = args.profile and Path(args.profile) / f"reconcile-{size}-second.prof"
        sampler = args.py_spy and Path(args.py_spy) / f"reconcile-{size}-second.txt"
        second = reconcile(db.url, sandbox, workdir / f"reconcile-{size}-second.log", profile, sampler)
        problems += check_second_run(second)
        # The bench changes nothing between the runs: what the first run left wrong, if anything.
        unheard = unheard_changes(held, invoices)
        del held
        sandbox_hwm = _vm_hwm(sandbox.process.pid)
        note(f"[{size:,}] second run: {second['seconds']:.1f} s, {second['apiRequests']} requests, "
             f"{second['counts']}")
    finally:
        stop(sandbox.process)
        if db:
            drop_database(db)

    # Invoices found drifted, by kind, from the run's counts of invoices with each kind of finding.
    expected = [f for inv in invoices for f in expected_findings(inv, drift)]
    return {
        "size": size,
        "first": first,
        "second": second,
        # The drift the ledger holds (a stale status, a smaller payment) changed without its hearing;
        # a missing invoice is none of the ledger's.
        "minimum": minimum_requests(invoices, first["windowStart"],
                                    unheard=sum(1 for kind in drift.kind.values() if kind != "missing")),
        "minimum_second": minimum_requests(invoices, second["windowStart"], unheard=unheard),
        "sandbox_hwm_kib": sandbox_hwm,
        "injected": drift.injected(),
        "expected_counts": Counter(f[1] for f in expected),
        "problems": problems,
    }


# --- The report ------------------------------------------------------------------------------------


def mib(kib: int) -> float:
    return kib / 1024


def projected(run: dict, rate: float = LIVE_RATE) -> float:
    """The run's wall time had its requests been paced at `rate` per second: at least the time
    the pacing alone takes, at least the time it took unpaced (the work overlaps the waits)."""
    return max(run["seconds"], run["apiRequests"] / rate)


def print_report(results: list[dict], args) -> bool:
    backend = ("PostgreSQL (seeded by COPY, then VACUUM ANALYZE)" if args.database_url
               else "SQLite (WAL, temporary file, seeded by INSERTs)")
    print(f"\nreconciliation against the sandbox over loopback HTTP (own process, rate limit off), "
          f"ledger on {backend}; 10 % drift: a third each missing, stale status, smaller amountPaid")
    print(f"machine: {os.cpu_count()} cores, shared with other people's tests and benchmarks "
          f"(load average at the end {os.getloadavg()[0]:.2f}): figures are noisy\n")
    header = (f"{'size':>9} {'run':>6} {'seconds':>8} {'inv/s':>7} {'requests':>8} {'formula':>8} {'ratio':>6} "
              f"{'at 100/s':>8} {'RSS MiB':>8} {'findings (found/expected)':<48} {'status':<10}")
    print(header)
    print("-" * len(header))
    for r in results:
        for name, run, minimum in (("first", r["first"], r["minimum"]), ("second", r["second"], r["minimum_second"])):
            counts = run["counts"]
            expected = r["expected_counts"] if name == "first" else Counter()
            found = (f"missing {counts['missing_in_ledger']}/{expected['missing_in_ledger']}, "
                     f"status {counts['status_mismatch']}/{expected['status_mismatch']}, "
                     f"amount {counts['amount_mismatch']}/{expected['amount_mismatch']}")
            rate = run["invoicesChecked"] / run["seconds"] if run["seconds"] else 0
            print(f"{r['size']:>9,} {name:>6} {run['seconds']:>8.1f} {rate:>7.0f} {run['apiRequests']:>8} "
                  f"{minimum['total']:>8} {run['apiRequests'] / minimum['total']:>6.3f} "
                  f"{projected(run):>7.1f}s {mib(run['peak_rss_kib']):>8.1f} {found:<48} "
                  f"{run['status']}, matches={run['matches']}")
    print()
    for r in results:
        first, second, m2 = r["first"], r["second"], r["minimum_second"]
        inj = r["injected"]
        print(f"{r['size']:,}: drift injected (invoices): missing {inj['missing']}, stale status {inj['status']}, "
              f"smaller amountPaid {inj['amount']}; a stale status also differs in amountPaid/amountDue "
              f"(paid, void), a smaller payment in amountPaid and amountDue, hence more amount findings")
        print(f"  first run: {first['invoicesChecked']:,} checked, {first['correctionsPosted']:,} correction "
              f"entries, CPU {first['cpu']:.1f} s of {first['seconds']:.1f} s wall, RSS before the run "
              f"{mib(first['rss_before_kib']):.1f} MiB, peak {mib(first['peak_rss_kib']):.1f} MiB "
              f"(VmHWM {mib(first['vm_hwm_kib']):.1f}); second run peak {mib(second['peak_rss_kib']):.1f} MiB")
        m1 = r["minimum"]
        print(f"  first run (no window): {m1['invoice_pages']} pages + {m1['unheard']} drifted ledger invoices asked "
              f"again + {m1['event_pages']} events page(s): formula {m1['total']}, {first['apiRequests']} requests made")
        before = ", ".join(f"{s} {m2['before'][s]:,} ({m2['status_pages'][s]} pages)" for s in NOT_FINAL)
        print(f"  second run (window from {datetime.fromtimestamp(second['windowStart'], UTC):%Y-%m-%d %H:%M} UTC): "
              f"{second['invoicesChecked']:,} checked; {m2['swept']:,} created in the window "
              f"({m2['invoice_pages']} pages); before it, VINR holds {before}; {m2['unheard']} changed without "
              f"the ledger hearing; {m2['event_pages']} events page(s): formula {m2['total']}, "
              f"{second['apiRequests']} requests made")
        print(f"  the sandbox (VINR's side, its own process) peaked at {mib(r['sandbox_hwm_kib']):.1f} MiB RSS")
        for problem in r["problems"]:
            print(f"  WRONG: {problem}")
    print("\nformula (issue 19) = ceil(invoices created in the window / 100) + sum over open, uncollectible, draft "
          "of ceil(VINR's invoices in that status created before the window / 100) + invoices changed without the "
          "ledger hearing of it; plus max(1, ceil(events / 100)) events pages, which the run also reads. A first "
          "run has no window: every invoice is in it")
    print(f"the runs are unpaced (VinrClient rate 0, sandbox rate limit off); 'at 100/s' projects each at VINR's "
          f"live {LIVE_RATE:.0f} requests/s: max(measured seconds, requests / {LIVE_RATE:.0f})")

    print("\ntargets (reported, never failed on):")
    for r in results:
        for name, minimum in (("first", r["minimum"]), ("second", r["minimum_second"])):
            ratio = r[name]["apiRequests"] / minimum["total"]
            print(f"  requests <= {TARGET_RATIO} x formula at {r['size']:,}, {name} run: {r[name]['apiRequests']} / "
                  f"{minimum['total']} = {ratio:.3f}  {'met' if ratio <= TARGET_RATIO else 'MISSED'}")
    if len(results) > 1:
        small, large = results[0], results[-1]
        growth = large["first"]["peak_rss_kib"] / small["first"]["peak_rss_kib"] - 1
        print(f"  peak RSS at {large['size']:,} within {TARGET_RSS_GROWTH:.0%} of {small['size']:,}: "
              f"{growth:+.1%}  {'met' if growth <= TARGET_RSS_GROWTH else 'MISSED'}")
    for r in results:
        seconds = r["first"]["seconds"]
        if r["size"] == 100_000:
            print(f"  100,000 invoices in under {TARGET_SECONDS_100K:.0f} s: {seconds:.1f} s  "
                  f"{'met' if seconds < TARGET_SECONDS_100K else 'MISSED'}")
        else:
            pace = seconds * 100_000 / r["size"]
            print(f"  at {r['size']:,}: {seconds:.1f} s, {pace:.0f} s per 100,000 at this pace "
                  f"(target under {TARGET_SECONDS_100K:.0f} s at 100,000)")
    correct = not any(r["problems"] for r in results)
    verdict = ("the findings are the drift injected, the ledger agrees after one run, a second finds nothing"
               if correct else "BROKEN (see WRONG above)")
    print(f"\ncorrectness: {verdict}")
    return correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], metavar="N")
    parser.add_argument("--quick", action="store_true", help="a smoke run: sizes 2,000 and 5,000")
    parser.add_argument("--database-url", metavar="postgresql://...",
                        help="a PostgreSQL server (URL of a database to connect to) on which a private database "
                             "is created per size and dropped afterwards; default SQLite in a temporary folder")
    parser.add_argument("--profile", metavar="DIR", help="cProfile each reconciliation into DIR")
    parser.add_argument("--py-spy", metavar="DIR", help="sample each reconciliation with py-spy (collapsed "
                        "stacks, all threads) into DIR; py-spy from $PY_SPY or the PATH")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, SQLite files)")
    args = parser.parse_args()
    sizes = [2_000, 5_000] if args.quick else sorted(args.sizes)
    for folder in (args.profile, args.py_spy):
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)

    # Stopped from outside, still stop the sandbox and the reconciler and drop the database.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="vinr-bench-reconcile-"))
    try:
        results = [measure(size, args, workdir) for size in sizes]
    finally:
        if args.keep:
            note(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if print_report(results, args) else 1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:4])
    else:
        main()
