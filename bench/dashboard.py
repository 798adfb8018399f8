"""The dashboard's pages at 100,000 invoices (issue 10: every page under 200 ms on this machine).

    .venv/bin/python bench/dashboard.py [--invoices 100000] [--repeat 7] [--ledger sqlite|postgresql] [--keep]

Builds the ledger's rows once (no posting rule): N invoices over 1,000 customers in EUR, USD
and JPY, 60 % paid, 30 % open, 5 % void, 5 % written off, each with its journal entries,
postings and received events (signature header included, as the receiver stores it); 2,000
failed payments in the last days; 60 reconciliation runs, the last with 2,000 findings; 100
dead letters; a few hundred notices. Then, for each ledger (both by default), writes them in
bulk into a freshly migrated database: a SQLite file in a temporary folder (plain INSERTs; no
ANALYZE, which nothing runs on a live SQLite ledger either), a private PostgreSQL database
(COPY, then VACUUM ANALYZE, as autovacuum would have; dropped at the end).

Invoices carry due dates (30 days after they were made, none for a tenth) and account managers
(a third their own, the rest their customer's, half of the 1,000 customers naming one), so the
aging pages, the API's /api/aging and a manager's worklist are measured too, and the aging's
statements on their own (`measure_aging`: wall and CPU time, which a busy machine inflates less).

Then the receiver app runs under uvicorn on loopback, the bench signs in, and each page is
requested once to warm up and `--repeat` times more; the table shows the median and the worst
time per page, against the 200 ms target. Exit status 0 whatever the figures (a bench, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # pg_support: a scratch database

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from ledger.migrate import upgrade  # noqa: E402
from pg_support import scratch_database  # noqa: E402
from receiver.app import create_app  # noqa: E402
from vinr_recon.settings import Settings  # noqa: E402

TOKEN = "bench-dashboard-token-" + "x" * 16
TARGET_MS = 200.0
PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
CUSTOMERS = 1000
CURRENCIES = ["EUR"] * 16 + ["USD"] * 3 + ["JPY"]
MANAGERS = [f"am{k}@merchant.example" for k in range(10)]


def aging_facts(rng: random.Random, created: int) -> tuple[int | None, str | None]:
    """An invoice's due date (30 days after it was made; none for a tenth, charged automatically)
    and its own account manager (a third name one; the others fall back to the customer's)."""
    due_date = None if rng.random() < 0.1 else created + 30 * 86400
    return due_date, rng.choice(MANAGERS) if rng.random() < 0.33 else None


def customer_rows(now: datetime) -> list[tuple]:
    """The customers cache: half of them name an account manager."""
    return [(f"cus_{c:05d}", f"Customer {c}", f"billing+{c}@example.test",
             MANAGERS[c % len(MANAGERS)] if c % 2 else None, "{}", now) for c in range(CUSTOMERS)]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def fill(invoices: int, seed: int = 7) -> tuple[dict[str, list[tuple]], dict]:
    """The ledger's rows, table by table, in the columns of INSERTS; and the ids the pages use."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    t0 = int(now.timestamp()) - 400 * 86400
    positions, entries, postings, events = [], [], [], []
    entry_id = posting_id = 0

    def entry(invoice_id, kind, currency, event_id, at, lines):
        nonlocal entry_id, posting_id
        entry_id += 1
        entries.append((entry_id, f"{invoice_id}:{kind}:{entry_id}", kind, invoice_id, currency, "webhook",
                        event_id, None, at, at))
        for account, direction, amount in lines:
            posting_id += 1
            postings.append((posting_id, entry_id, account, direction, amount, currency))

    def event(event_id, event_type, invoice_id, created, at, outcome="applied", body=None, headers=None, error=None):
        events.append((event_id, event_type, invoice_id, "webhook", body or b'{"id":"%s"}' % event_id.encode(),
                       json.dumps({"x-vinr-signature": f"t={created},v1=" + "ab" * 32} if headers is None else headers),
                       created, at, at if outcome == "applied" else None, outcome, error))

    for n in range(invoices):
        invoice_id = f"in_{n:08d}"
        currency = rng.choice(CURRENCIES)
        total = rng.randint(1_000, 500_000) if currency != "JPY" else rng.randint(100, 50_000)
        created = t0 + n * (400 * 86400 // invoices)
        at = datetime.fromtimestamp(created + 60, UTC)
        roll = rng.random()
        status = "paid" if roll < 0.6 else "open" if roll < 0.9 else "void" if roll < 0.95 else "uncollectible"
        paid = total if status == "paid" else 0
        due = total if status in ("open", "uncollectible") else 0
        positions.append((invoice_id, f"cus_{n % CUSTOMERS:05d}", f"INV-2026-{n:06d}", status, currency, total,
                          paid, due, total, total if status == "uncollectible" else 0, 0, 0, 2, created + 120,
                          created + 120 if status == "paid" else None, created, at, *aging_facts(rng, created)))
        event(f"evt_{n:08d}_f", "invoice.finalized", invoice_id, created + 60, at)
        entry(invoice_id, "finalize", currency, f"evt_{n:08d}_f", at,
              [("accounts_receivable", "debit", total), ("revenue", "credit", total)])
        later = at + timedelta(seconds=60)
        if status != "open":
            kind, lines, etype = {
                "paid": ("payment", [("vinr_clearing", "debit", total), ("accounts_receivable", "credit", total)],
                         "invoice.paid"),
                "void": ("void", [("revenue", "debit", total), ("accounts_receivable", "credit", total)],
                         "invoice.voided"),
                "uncollectible": ("write_off", [("bad_debt", "debit", total),
                                                ("accounts_receivable", "credit", total)],
                                  "invoice.marked_uncollectible"),
            }[status]
            event(f"evt_{n:08d}_e", etype, invoice_id, created + 120, later)
            entry(invoice_id, kind, currency, f"evt_{n:08d}_e", later, lines)
    # Failed payments: 2,000 in the last days on open invoices.
    open_ids = [p[0] for p in positions if p[3] == "open"]
    for k in range(2000):
        at = now - timedelta(seconds=rng.randint(0, 10 * 86400))
        event(f"evt_fail_{k:06d}", "invoice.payment_failed", rng.choice(open_ids), int(at.timestamp()), at)
    # 100 dead letters, their received events marked dead.
    for k in range(100):
        event(f"evt_dead_{k:04d}", "invoice.paid", None, t0, now, outcome="dead", body=b"{}", headers={},
              error="InvalidEvent: total")
    runs = [(r + 1, now - timedelta(days=60 - r), now - timedelta(days=60 - r, minutes=-3), "completed", False, t0,
             invoices, 0, 2000, invoices // 100, json.dumps({"status_mismatch": 2000}), None) for r in range(60)]
    run_id = len(runs)
    rows = {
        "customers": customer_rows(now),
        "invoice_positions": positions, "journal_entries": entries, "postings": postings, "received_events": events,
        "reconciliation_runs": runs,
        "reconciliation_findings": [(run_id, f"in_{rng.randrange(invoices):08d}", "status_mismatch", "status", "open",
                                     "paid", True, "[1]") for _ in range(2000)],
        "dead_letters": [(f"evt_dead_{k:04d}", "invoice.paid", b"{}", "{}", "InvalidEvent: total is a float", 5, now)
                         for k in range(100)],
        "outbox": [(f"paid:in_{n:08d}:fulfilment", "fulfilment", "paid", f"in_{n:08d}", "{}",
                    "dead" if n % 50 == 0 else "sent", 1, now) for n in range(0, invoices, 250)],
    }
    busy = max(range(CUSTOMERS), key=lambda c: 0)  # any customer: 100 invoices each
    return rows, {"invoice": f"in_{invoices // 2:08d}", "number": f"INV-2026-{invoices // 3:06d}",
                  "customer": f"cus_{busy:05d}", "run": run_id, "manager": MANAGERS[3], "deep_page": max(1, invoices // 50 - 1),
                  "rows": {"invoices": len(positions), "entries": len(entries), "postings": len(postings),
                           "events": len(events)}}


COLUMNS = {
    "invoice_positions": ("invoice_id", "customer", "number", "status", "currency", "total", "amount_paid",
                          "amount_due", "recognized", "written_off", "credited", "attempt_count", "version",
                          "last_event_at", "paid_at", "created", "updated_at", "due_date", "account_manager"),
    "customers": ("id", "name", "email", "account_manager", "metadata", "refreshed_at"),
    "journal_entries": ("id", "idempotency_key", "kind", "invoice_id", "currency", "source", "event_id", "run_id",
                        "effective_at", "recorded_at"),
    "postings": ("id", "entry_id", "account", "direction", "amount", "currency"),
    "received_events": ("event_id", "type", "invoice_id", "source", "body", "headers", "created", "received_at",
                        "applied_at", "outcome", "error"),
    "reconciliation_runs": ("id", "started_at", "finished_at", "status", "dry_run", "window_start",
                            "invoices_checked", "events_backfilled", "corrections_posted", "api_requests", "counts",
                            "message"),
    "reconciliation_findings": ("run_id", "invoice_id", "category", "field", "ledger_value", "vinr_value",
                                "corrected", "entry_ids"),
    "dead_letters": ("event_id", "type", "body", "headers", "error", "attempts", "dead_at"),
    "outbox": ("key", "channel", "kind", "invoice_id", "payload", "status", "attempts", "created_at"),
}


def write_sqlite(path: Path, rows: dict[str, list[tuple]]) -> None:
    """With sqlite3 directly (times as SQLAlchemy stores them on SQLite)."""
    db = sqlite3.connect(path)
    with db:
        for table, columns in COLUMNS.items():
            values = [tuple(_iso(v) if isinstance(v, datetime) else v for v in row) for row in rows[table]]
            db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                           values)
    db.close()


async def write_postgres(url: str, rows: dict[str, list[tuple]]) -> None:
    """With asyncpg's COPY, then VACUUM ANALYZE: what autovacuum does to a live ledger once a
    tenth of a table changed, and has not had the time to do after a bulk load (without it, the
    planner knows nothing of the tables and joins one invoice's entries by scanning postings)."""
    conn = await asyncpg.connect(url)
    try:
        for table, columns in COLUMNS.items():
            await conn.copy_records_to_table(table, records=rows[table], columns=columns)
        for table in ("journal_entries", "postings", "reconciliation_runs"):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


class Server:
    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, ws="none",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


PAGES = [
    ("overview", "/dashboard/"),
    ("invoices, page 1", "/dashboard/invoices"),
    ("invoices, page {deep_page:,} (last)", "/dashboard/invoices?page={deep_page}"),
    ("invoices, status=paid, page 1", "/dashboard/invoices?status=paid"),
    ("invoices, status=open, page 500", "/dashboard/invoices?status=open&page=500"),
    ("invoices, search by customer", "/dashboard/invoices?q={customer}"),
    ("invoices, search by number (303)", "/dashboard/invoices?q={number}"),
    ("invoices, no match", "/dashboard/invoices?q=nothing-like-it"),
    ("one invoice", "/dashboard/invoices/{invoice}"),
    ("reconciliation runs", "/dashboard/runs"),
    ("run {run} (2,000 findings, 500 shown)", "/dashboard/runs/{run}"),
    ("run CSV (2,000 rows)", "/dashboard/runs/{run}/findings.csv"),
    ("dead letters (100)", "/dashboard/dead-letters"),
    ("aging, today", "/dashboard/aging"),
    ("aging, as of 90 days ago", "/dashboard/aging?asOf={as_of_past}"),
    ("invoices of an aging bucket (EUR, 31-60)", "/dashboard/invoices?aging=days31to60&currency=EUR"),
    ("account manager's page (worklist)", "/dashboard/managers/{manager}"),
    ("GET /api/aging", "/api/aging"),
    ("GET /api/aging?manager=", "/api/aging?manager={manager}"),
    ("sign-in form", "/dashboard/signin"),
]


def measure(database_url: str, ids: dict, repeat: int) -> float:
    """Sign in, request every page `repeat` times after a warm-up, print the table; the slowest median."""
    settings = Settings(_env_file=None, vinr_webhook_secret=SecretStr("whsec_bench_" + "k" * 24),
                        ledger_api_token=SecretStr(TOKEN), database_url=database_url,
                        queue_name="arq:queue:bench-dashboard")
    worst = 0.0
    ids = {**ids, "as_of_past": (datetime.now(UTC) - timedelta(days=90)).date().isoformat()}
    # The bearer token is for /api/aging; the dashboard pages go by the session cookie.
    with Server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30, headers={
            "authorization": f"Bearer {TOKEN}"}) as client:
        client.get("/dashboard/signin")
        signed = client.post("/dashboard/signin", data={"token": TOKEN, "next": "/dashboard/"})
        assert signed.status_code == 303, signed.text
        print(f"\n{'page':<44}{'status':>7}{'median ms':>11}{'max ms':>9}{'KiB':>7}  target {TARGET_MS:.0f} ms")
        for name, path in PAGES:
            name, path = name.format(**ids), path.format(**ids)
            times, response = [], None
            for i in range(repeat + 1):
                t = time.perf_counter()
                response = client.get(path)
                elapsed = (time.perf_counter() - t) * 1000
                if i:
                    times.append(elapsed)
            assert response.status_code in (200, 303), (path, response.status_code)
            assert not re.search(r"v1=[0-9a-f]{16}", response.text) and TOKEN not in response.text
            median = statistics.median(times)
            worst = max(worst, median)
            print(f"{name:<44}{response.status_code:>7}{median:>11.1f}{max(times):>9.1f}"
                  f"{len(response.content) / 1024:>7.0f}  {'ok' if median < TARGET_MS else 'OVER'}")
    print(f"\nslowest median: {worst:.1f} ms ({'every page under' if worst < TARGET_MS else 'over'} "
          f"{TARGET_MS:.0f} ms)")
    measure_redraw(database_url, repeat)
    return worst


def measure_redraw(database_url: str, repeat: int) -> None:
    """The overview's charts are kept a minute (receiver.dashboard.activity.ActivityCache): the
    table above shows them kept; this is what the first load after a minute adds, redrawing."""
    import asyncio

    from ledger.db import create_engine
    from receiver.dashboard.activity import activity

    async def redraw() -> list[float]:
        engine = create_engine(database_url, writer=False)
        times = []
        try:
            for _ in range(repeat + 1):
                async with engine.connect() as conn:
                    t = time.perf_counter()
                    await activity(conn, datetime.now(UTC).date())
                    times.append((time.perf_counter() - t) * 1000)
        finally:
            await engine.dispose()
        return times[1:]

    times = asyncio.run(redraw())
    print(f"{'overview charts redrawn (once a minute)':<44}{'':>7}{statistics.median(times):>11.1f}{max(times):>9.1f}")


def measure_aging(database_url: str, ids: dict, repeat: int) -> None:
    """ledger.aging's statements without HTTP: median wall and process CPU time over `repeat` runs
    after a warm-up (on SQLite the CPU is this process's; on PostgreSQL most of it is the server's)."""
    from ledger.aging import aging, worklist
    from ledger.db import create_engine

    today = datetime.now(UTC).date()
    manager = ids["manager"]

    async def run() -> None:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                print(f"\n{'aging statement':<44}{'wall ms':>11}{'CPU ms':>9}  rows")
                for name, call in [("aging, everyone", lambda: aging(conn, today, None)),
                                   ("aging, one manager", lambda: aging(conn, today, None, manager=manager)),
                                   ("worklist, one manager", lambda: worklist(conn, manager, today, None))]:
                    walls, cpus = [], []
                    for i in range(repeat + 1):
                        wall, cpu = time.perf_counter(), time.process_time()
                        result = await call()
                        if i:
                            walls.append((time.perf_counter() - wall) * 1000)
                            cpus.append((time.process_time() - cpu) * 1000)
                    rows = len(result[0]) if isinstance(result, tuple) else len(result.managers)
                    print(f"{name:<44}{statistics.median(walls):>11.1f}{statistics.median(cpus):>9.1f}  {rows}")
        finally:
            await engine.dispose()

    asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--ledger", choices=["sqlite", "postgresql"], action="append",
                        help="which ledger (default: both)")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite ledger's folder")
    args = parser.parse_args()

    started = time.perf_counter()
    rows, ids = fill(args.invoices)
    counts = ids["rows"]
    print(f"ledger: {counts['invoices']:,} invoices, {counts['entries']:,} entries, {counts['postings']:,} postings, "
          f"{counts['events']:,} received events (built in {time.perf_counter() - started:.1f} s)")
    for ledger in args.ledger or ["sqlite", "postgresql"]:
        started = time.perf_counter()
        if ledger == "sqlite":
            with sqlite_ledger(rows, "bench-dashboard-", keep=args.keep) as path:
                print(f"\nSQLite: written in {time.perf_counter() - started:.1f} s ({path.stat().st_size / 2**20:.0f} MiB)")
                measure(f"sqlite:///{path}", ids, args.repeat)
                measure_aging(f"sqlite:///{path}", ids, args.repeat)
                measure_export(f"sqlite:///{path}", ids)
        else:
            with postgres_ledger(rows, "bench_dashboard_") as url:
                print(f"\nPostgreSQL: written and vacuumed in {time.perf_counter() - started:.1f} s")
                measure(url, ids, args.repeat)
                measure_aging(url, ids, args.repeat)
                measure_export(url, ids)
    return 0


@contextmanager
def sqlite_ledger(rows: dict[str, list[tuple]], prefix: str, *, keep: bool = False) -> Iterator[Path]:
    """A migrated SQLite ledger holding `rows`, in a temporary folder (kept if asked); its path."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    path = folder / "ledger.db"
    try:
        upgrade(f"sqlite:///{path}")
        write_sqlite(path, rows)
        yield path
    finally:
        if keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def postgres_ledger(rows: dict[str, list[tuple]], prefix: str) -> Iterator[str]:
    """A migrated PostgreSQL ledger holding `rows` (vacuumed), in a scratch database of the
    cluster at PG_ADMIN_URL, dropped afterwards; its URL."""
    with scratch_database(PG_ADMIN_URL, f"{prefix}{uuid.uuid4().hex[:12]}") as url:
        upgrade(url)
        asyncio.run(write_postgres(url, rows))
        yield url


# --- the journal export (issue 20): 340,000 postings streamed, time and peak memory ------------


def _export_run(database_url: str, start, end) -> tuple[float, int, int]:
    """`vinr-recon export journal` as its own process: seconds, bytes written, its peak RSS (KiB).

    The peak is the child's own VmHWM, read from /proc while it runs (it only grows): getrusage
    would count the pages the child shared with this bench, which holds the whole ledger, before
    its exec."""
    command = [str(Path(sys.executable).with_name("vinr-recon")), "export", "journal", "--from", str(start),
               "--to", str(end)]
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"}
    status = None
    with tempfile.TemporaryFile() as out:
        t = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, env=env)
        peak = 0
        while child.poll() is None:
            try:
                text = Path(f"/proc/{child.pid}/status").read_text()
                peak = max(peak, int(re.search(r"VmHWM:\s+(\d+)", text).group(1)))
            except (OSError, AttributeError):
                pass  # between fork and exec, or just exited
            time.sleep(0.02)
        elapsed = time.perf_counter() - t
        status = child.returncode
        assert status == 0, f"export exited {status}"
        size = out.seek(0, os.SEEK_END)
    return elapsed, size, peak


def measure_export(database_url: str, ids: dict) -> None:
    """The whole ledger's journal (every posting) and one tenth of it, through the command and the
    API: a peak memory that does not grow with the rows is the sign of a stream."""
    today = datetime.now(UTC).date()
    first = today - timedelta(days=402)  # fill() starts 400 days back
    tenth = today - timedelta(days=40)
    print(f"\n{'journal export':<44}{'postings':>10}{'seconds':>9}{'MiB':>7}{'rows/s':>10}{'peak RSS MiB':>14}")
    for label, start in (("command, every posting", first), ("command, the last 40 days", tenth)):
        elapsed, size, peak = _export_run(database_url, start, today)
        rows = _csv_rows(database_url, start) if start != first else ids["rows"]["postings"]
        print(f"{label:<44}{rows:>10,}{elapsed:>9.2f}{size / 2**20:>7.1f}{rows / elapsed:>10,.0f}{peak / 1024:>14.0f}")
    settings = Settings(_env_file=None, vinr_webhook_secret=SecretStr("whsec_bench_" + "k" * 24),
                        ledger_api_token=SecretStr(TOKEN), database_url=database_url,
                        queue_name="arq:queue:bench-dashboard")
    with Server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=120) as client:
        t = time.perf_counter()
        size = lines = 0
        with client.stream("GET", "/api/journal.csv", params={"from": str(first), "to": str(today)},
                           headers={"authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status_code == 200, response.status_code
            first_byte = None
            for chunk in response.iter_bytes():
                first_byte = first_byte or time.perf_counter() - t
                size += len(chunk)
                lines += chunk.count(b"\n")
        elapsed = time.perf_counter() - t
    print(f"{'GET /api/journal.csv, every posting':<44}{lines - 1:>10,}{elapsed:>9.2f}{size / 2**20:>7.1f}"
          f"{(lines - 1) / elapsed:>10,.0f}{'':>14}  first byte after {first_byte * 1000:.0f} ms")


def _csv_rows(database_url: str, start) -> int:
    """How many postings the export from `start` holds, counted by the database."""
    async def count() -> int:
        from sqlalchemy import func, select

        from ledger.db import create_engine
        from ledger.journal import day_start, entries, postings
        engine = create_engine(database_url, writer=False)
        try:
            async with engine.connect() as conn:
                return await conn.scalar(select(func.count()).select_from(
                    postings.join(entries, entries.c.id == postings.c.entry_id))
                    .where(entries.c.effective_at >= day_start(start)))
        finally:
            await engine.dispose()

    return asyncio.run(count())


if __name__ == "__main__":
    sys.exit(main())
