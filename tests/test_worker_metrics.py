"""The worker's `/metrics` scraped over HTTP from a live `vinr-recon worker`, fed by a live
receiver with signed deliveries; the reconciliation's figures after a `vinr-recon reconcile`
against the sandbox, served by both processes; the Grafana dashboard asking only for what they
expose; and what the ledger's run records turn into (dry runs and failures included)."""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from conftest import WEBHOOK_SECRET, copy_of, tag_of
from ledger.runs import reconciliation_figures
from ledger.tables import ReconciliationRun
from lifecycles import Event, enqueue, snapshot
from receiver_support import free_port, signed
from test_worker_processes import finish, start, until_listening
from vinr.sandbox.app import create_app
from vinr.sandbox.config import SandboxConfig
from vinr.sandbox.serving import serve_in_thread
from worker.metrics import WorkerMetrics
from worker.settings import MetricsPortTaken, worker_settings
from worker.state import state

pytestmark = pytest.mark.slow

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "vinr-recon.json"
TOKEN = secrets.token_hex(32)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped[name, tuple(sorted(labels.items()))]


async def scrape(client: httpx.AsyncClient, token: str | None = TOKEN) -> dict:
    answer = await client.get("/metrics", headers={"authorization": f"Bearer {token}"} if token else {})
    assert answer.status_code == 200, answer.text
    return samples(answer.text)


async def until(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.1)


async def until_serving(client: httpx.AsyncClient, process: subprocess.Popen, timeout: float = 20) -> None:
    """Until the worker's metrics port answers (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            await client.get("/metrics")
            return
        except httpx.TransportError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"the worker's metrics port never answered: exit {process.poll()}")


def paid_event(tag: str, n: int) -> Event:
    invoice = snapshot(f"inv_{tag}_{n}", "paid", 1000 + n, 1000 + n)
    return Event(f"evt_{tag}_{n}", "invoice.paid", invoice, int(time.time()))


class Stack:
    """A migrated SQLite ledger, a receiver and a worker with its metrics port, as processes."""

    def __init__(self, settings, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.settings = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'ledger.db'}"})
        self.tmp_path = tmp_path
        self.env = {"VINR_WEBHOOK_SECRET": WEBHOOK_SECRET, "METRICS_TOKEN": TOKEN, **(env or {})}
        self.processes: list[subprocess.Popen] = []

    async def __aenter__(self) -> Stack:
        code, _, err = await finish(start(self.settings, "db", "upgrade", cwd=self.tmp_path))
        assert code == 0, err
        port, metrics_port = free_port(), free_port()
        self.receiver = self._start("serve", "--port", str(port))
        self.worker = self._start("worker", "--metrics-port", str(metrics_port))
        self.web = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)
        self.metrics = httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}", timeout=10)
        await until_listening(self.web, self.receiver)
        await until_serving(self.metrics, self.worker)
        return self

    def _start(self, *args: str) -> subprocess.Popen:
        log = open(self.tmp_path / f"{args[0]}.log", "w")  # not a pipe: nobody reads it while it runs
        process = start(self.settings, *args, cwd=self.tmp_path, log=log, env=self.env)
        log.close()
        self.processes.append(process)
        return process

    async def __aexit__(self, *exc) -> None:
        await self.web.aclose()
        await self.metrics.aclose()
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            await finish(process)

    async def deliver(self, event: Event) -> None:
        answer = await self.web.post("/webhooks/vinr", content=event.body, headers=signed(event.body))
        assert answer.status_code == 200, answer.text


async def test_a_live_worker_counts_what_it_applied_and_serves_the_last_reconciliation(settings, redis, tmp_path):
    tag = tag_of(settings.queue_name)
    app = create_app(SandboxConfig(rate_limit=0, seed=5))
    sandbox = app.state.sandbox
    sandbox.seed(12)
    with serve_in_thread(app) as root:
        vinr = {"VINR_API_KEY": sandbox.api_key, "VINR_API_BASE": root + "/v1"}
        async with Stack(settings, tmp_path, env=vinr) as stack:
            assert (await stack.metrics.get("/metrics")).status_code == 401  # METRICS_TOKEN, as the receiver
            assert (await stack.metrics.get("/metrics", headers={"authorization": "Bearer wrong"})).status_code == 401
            assert (await stack.metrics.get("/", headers={"authorization": f"Bearer {TOKEN}"})).status_code == 404
            before = await scrape(stack.metrics)
            assert value(before, "vinr_reconcile_last_success_timestamp_seconds") == 0  # no run, ever
            assert math.isnan(value(before, "vinr_reconcile_last_run_duration_seconds"))

            events = [paid_event(tag, n) for n in range(3)]
            for event in events:
                await stack.deliver(event)
            # The first again, as VINR redelivers it once arq's result has expired: a job of its own.
            await enqueue(redis, stack.settings.queue_name, events[:1], job_id=lambda e: f"{e.id}:again")

            async def all_four_done() -> bool:
                scraped = await scrape(stack.metrics)
                return sum(value(scraped, "vinr_worker_events_total", outcome=o)
                           for o in ("applied", "duplicate")) >= 4
            await until(all_four_done, "the worker finished four jobs")
            scraped = await scrape(stack.metrics)
            assert value(scraped, "vinr_worker_events_total", outcome="applied") == 3
            assert value(scraped, "vinr_worker_events_total", outcome="duplicate") == 1
            assert value(scraped, "vinr_worker_events_total", outcome="dead") == 0
            assert sum(value(scraped, "vinr_worker_event_retries_total", reason=r)
                       for r in ("error", "database_unreachable", "dead_letter_unwritten")) == 0
            assert value(scraped, "vinr_worker_batch_size_sum") == 4  # every event went through a batch
            assert value(scraped, "vinr_worker_batch_size_count") >= 1
            # The process and Python collectors.
            assert value(scraped, "process_resident_memory_bytes") > 0
            assert value(scraped, "process_start_time_seconds") > 0
            assert any(name == "python_info" for name, _ in scraped)
            assert any(name == "python_gc_collections_total" for name, _ in scraped)

            started = time.time()
            run = await finish(start(stack.settings, "reconcile", "--json", cwd=tmp_path, env=vinr), timeout=120)
            ended = time.time()
            assert run[0] in (0, 1), run[2][-2000:]
            report = json.loads(run[1])
            assert report["status"] == "completed" and report["counts"]["missing_in_ledger"] > 0

            for client in (stack.metrics, stack.web):  # the worker's and the receiver's, the same figures
                scraped = await scrape(client)
                assert started - 1 <= value(scraped, "vinr_reconcile_last_success_timestamp_seconds") <= ended + 1
                assert value(scraped, "vinr_reconcile_last_run_api_requests") == report["apiRequests"] > 0
                assert 0 < value(scraped, "vinr_reconcile_last_run_duration_seconds") <= ended - started + 1
                assert value(scraped, "vinr_reconcile_last_run_status", status="completed") == 1
                assert value(scraped, "vinr_reconcile_last_run_status", status="failed") == 0
                for category, count in report["counts"].items():
                    assert value(scraped, "vinr_reconcile_last_run_findings", category=category) == count, category
                assert value(scraped, "process_resident_memory_bytes") > 0  # the receiver's collectors too


def queried_metrics(dashboard: dict) -> set[str]:
    """Every metric name the dashboard's panels ask Prometheus for."""
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs, "the dashboard queries nothing"
    names = set()
    for expr in exprs:
        found = re.findall(r"\b((?:vinr|process|python)_[a-z0-9_]+)", expr)
        assert found, f"no metric in {expr!r}"
        names.update(found)
    return names


async def test_the_dashboard_queries_only_metrics_the_live_processes_expose(settings, redis, tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    assert {"name": "datasource", "type": "datasource", "query": "prometheus"}.items() <= \
        next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource").items()
    tag = tag_of(settings.queue_name)
    async with Stack(settings, tmp_path) as stack:
        event = paid_event(tag, 0)
        await stack.deliver(event)
        forged = await stack.web.post("/webhooks/vinr", content=event.body,
                                      headers=signed(event.body, secret="whsec_" + "0" * 32))
        assert forged.status_code == 400  # a verification failure, for its series

        async def applied() -> bool:
            return value(await scrape(stack.metrics), "vinr_worker_events_total", outcome="applied") == 1
        await until(applied, "the worker applied the event")
        exposed = {name for name, _ in await scrape(stack.metrics)} | {name for name, _ in await scrape(stack.web)}
    missing = queried_metrics(dashboard) - exposed
    assert not missing, f"the dashboard asks for what no process exposes: {sorted(missing)}"


async def test_a_metrics_port_someone_chose_and_cannot_have_stops_the_worker_with_one_line(settings, redis, tmp_path):
    settings = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'ledger.db'}"})
    assert (await finish(start(settings, "db", "upgrade", cwd=tmp_path)))[0] == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await finish(start(settings, "worker", cwd=tmp_path, env={"WORKER_METRICS_PORT": str(port)}))
    assert code == 2, err[-2000:]
    assert f"vinr-recon worker: WORKER_METRICS_PORT (or --metrics-port): cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err


async def test_the_default_port_taken_leaves_the_worker_running_without_metrics(settings, sqlite_template, tmp_path):
    """A second worker on a host, both on the default port: it applies events all the same."""
    settings = settings.model_copy(update={"database_url": copy_of(sqlite_template, tmp_path / "ledger.db")})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        chosen = worker_settings(settings, metrics_port=port, metrics_port_chosen=True)
        with pytest.raises(MetricsPortTaken):
            await chosen["on_startup"](ctx := {})
        await chosen["on_shutdown"](ctx)
        default = worker_settings(settings, metrics_port=port, metrics_port_chosen=False)
        await default["on_startup"](ctx := {})
        try:
            worker = state(ctx)
            assert worker.metrics_server is None and worker.batcher is not None and worker.engine is not None
        finally:
            await default["on_shutdown"](ctx)


def run_row(started: datetime, minutes: float, status: str, *, dry_run: bool = False, requests: int = 0,
            counts: dict | None = None) -> dict:
    return dict(started_at=started, finished_at=started + timedelta(minutes=minutes), status=status,
                dry_run=dry_run, api_requests=requests, counts=counts or {})


async def test_the_figures_come_from_the_newest_real_runs(ledger_engine):
    metrics = WorkerMetrics()
    gauges = metrics.reconciliation
    async with ledger_engine.connect() as conn:
        gauges.show(await reconciliation_figures(conn))
    assert metrics.registry.get_sample_value("vinr_reconcile_last_success_timestamp_seconds") == 0
    assert math.isnan(metrics.registry.get_sample_value("vinr_reconcile_last_run_api_requests"))

    night = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    runs = ReconciliationRun.__table__
    async with ledger_engine.begin() as conn:
        await conn.execute(insert(runs), [
            run_row(night, 3, "completed", requests=40, counts={"status_mismatch": 2}),
            run_row(night + timedelta(days=1), 2, "failed", requests=7),  # the newest that ended
            run_row(night + timedelta(days=1, hours=1), 1, "completed", dry_run=True, requests=99,
                    counts={"status_mismatch": 5}),  # a preview: counts for nothing
            {**run_row(night + timedelta(days=1, hours=2), 0, "running"), "finished_at": None},
        ])
    async with ledger_engine.connect() as conn:
        gauges.show(await reconciliation_figures(conn))
    sample = metrics.registry.get_sample_value
    assert sample("vinr_reconcile_last_success_timestamp_seconds") == (night + timedelta(minutes=3)).timestamp()
    assert sample("vinr_reconcile_last_run_timestamp_seconds") == (night + timedelta(days=1, minutes=2)).timestamp()
    assert sample("vinr_reconcile_last_run_duration_seconds") == 120
    assert sample("vinr_reconcile_last_run_api_requests") == 7
    assert sample("vinr_reconcile_last_run_status", {"status": "failed"}) == 1
    assert sample("vinr_reconcile_last_run_status", {"status": "completed"}) == 0
    assert sample("vinr_reconcile_last_run_findings", {"category": "status_mismatch"}) == 0

    gauges.show(None)  # the ledger did not answer: unknown, not "never"
    assert math.isnan(sample("vinr_reconcile_last_success_timestamp_seconds"))

