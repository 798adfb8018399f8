"""The Prometheus figures every process serves from the ledger, and the runtime collectors.

The reconciliation figures are read from the ledger's `reconciliation_runs` at scrape time
(ledger.runs.reconciliation_figures), so they hold whichever process ran the run: the nightly
cron in some worker, or `vinr-recon reconcile` from a shell. Each process's registry is its own
(receiver.metrics, worker.metrics), never prometheus_client's global one.
"""

from __future__ import annotations

import asyncio
import math

from prometheus_client import CollectorRegistry, Gauge, GCCollector, PlatformCollector, ProcessCollector
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.findings import CATEGORIES
from ledger.runs import ReconciliationFigures, reconciliation_figures

RUN_STATUSES = ("completed", "partial", "failed")
SCRAPE_TIMEOUT = 1.0  # seconds for the ledger's figures; a scrape must answer well before its own timeout


def add_runtime_collectors(registry: CollectorRegistry) -> None:
    """prometheus_client's process (`process_*`) and Python (`python_info`, `python_gc_*`) collectors."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class ReconciliationGauges:
    """The reconciliation's figures as gauges on `registry`; NaN while unknown (the ledger did
    not answer). With no completed run ever, the last success is 0, so "older than 26 h" holds."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.last_success = Gauge(
            "vinr_reconcile_last_success_timestamp_seconds",
            "When the newest completed reconciliation run finished (Unix time; 0: none ever). "
            "Alert on time() - this > 26 h.", registry=registry)
        self.last_run = Gauge(
            "vinr_reconcile_last_run_timestamp_seconds",
            "When the newest finished reconciliation run (completed, partial or failed) finished.",
            registry=registry)
        self.duration = Gauge("vinr_reconcile_last_run_duration_seconds",
                              "How long the newest finished reconciliation run took.", registry=registry)
        self.requests = Gauge("vinr_reconcile_last_run_api_requests",
                              "VINR API requests the newest finished reconciliation run made.", registry=registry)
        self.status = Gauge("vinr_reconcile_last_run_status",
                            "1 for how the newest finished reconciliation run ended, 0 for the others.",
                            ["status"], registry=registry)
        self.findings = Gauge("vinr_reconcile_last_run_findings",
                              "Differences the newest finished reconciliation run found, by category.",
                              ["category"], registry=registry)

    def show(self, figures: ReconciliationFigures | None) -> None:
        """Set every gauge from `figures`; None: unknown, so NaN."""
        nan = math.nan
        run = figures.last_run if figures else None
        self.last_success.set(nan if figures is None else
                              figures.last_success.timestamp() if figures.last_success else 0)
        self.last_run.set(run.finished_at.timestamp() if run else nan)
        self.duration.set((run.finished_at - run.started_at).total_seconds() if run else nan)
        self.requests.set(run.api_requests if run else nan)
        for status in RUN_STATUSES:
            self.status.labels(status).set(nan if run is None else float(run.status == status))
        for category in CATEGORIES:
            self.findings.labels(category).set(run.findings.get(category, 0) if run else nan)

    async def refresh(self, engine: AsyncEngine) -> None:
        """Read the figures from the ledger (NaN when it does not answer in time)."""
        self.show(await read_figures(engine))


async def read_figures(engine: AsyncEngine, timeout: float = SCRAPE_TIMEOUT) -> ReconciliationFigures | None:
    async def read() -> ReconciliationFigures:
        async with engine.connect() as conn:
            return await reconciliation_figures(conn)

    try:
        return await asyncio.wait_for(read(), timeout)
    except Exception:  # the scrape still answers; NaN says the figures are unknown
        return None
