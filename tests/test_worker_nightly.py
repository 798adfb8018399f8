"""The nightly reconciliation: scheduled in `vinr-recon worker`, run against the sandbox over HTTP."""

from __future__ import annotations

from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import select

from conftest import REDIS_URL
from ledger.db import create_engine
from ledger.tables import InvoicePosition
from reconcile.lock import exclusive, lock_key
from vinr.sandbox.app import create_app
from vinr.sandbox.config import SandboxConfig
from vinr.sandbox.serving import serve
from worker.jobs import RetryPolicy
from worker.settings import Worker, worker_settings
from worker.state import STATE, WorkerState


def test_the_worker_schedules_one_run_at_reconcile_at_in_utc(settings):
    settings = settings.model_copy(update={"vinr_api_key": SecretStr("key"), "reconcile_at": "03:45"})
    options = worker_settings(settings)

    [job] = options["cron_jobs"]
    # Its runs' ids ({name}:{time}) are the installation's own (tests/test_queue_isolation.py).
    assert (job.name, job.hour, job.minute, job.second, job.unique) == (
        f"reconcile_nightly:{settings.queue_name}", 3, 45, 0, True)
    assert options["timezone"].utcoffset(None).total_seconds() == 0
    assert job.timeout_s >= 3600  # not the 60 s of an event's job


async def test_the_nightly_jobs_long_timeout_does_not_hold_a_killed_workers_events(settings):
    """arq keeps a job's in-progress key for the longest function timeout plus 10 s: with the
    nightly run's hours, every event a killed worker had in flight waited that long."""
    settings = settings.model_copy(update={"vinr_api_key": SecretStr("key")})
    worker = Worker(**worker_settings(settings, job_timeout=20), handle_signals=False)  # connects on run only
    assert worker.in_progress_timeout_s == 30


def test_without_an_api_key_the_worker_runs_without_the_nightly_job(settings):
    assert settings.vinr_api_key is None
    assert worker_settings(settings)["cron_jobs"] == []


async def test_the_nightly_job_reconciles_the_ledger_with_vinr(ledger_settings):
    """The ledger never heard a webhook; the nightly job alone brings it in line with VINR."""
    app = create_app(SandboxConfig(rate_limit=0))
    async with serve(app) as root:
        state = app.state.sandbox.state
        customer = state.create_customer(email="ap@acme.example", name="Acme GmbH", metadata={}).id
        invoice = state.create_invoice(customer=customer, currency="EUR", collection_method="charge_automatically",
                                       days_until_due=None, metadata={})
        state.add_line(invoice.id, description="Implementation", quantity=1, unit_amount=196000)
        state.finalize(invoice.id)
        state.pay(invoice.id, "4242424242424242", amount=50000)

        settings = ledger_settings.model_copy(update={
            "vinr_api_key": SecretStr(app.state.sandbox.api_key), "vinr_api_base": root + "/v1"})
        [job] = worker_settings(settings)["cron_jobs"]
        engine, redis = create_engine(settings.database_url), Redis.from_url(REDIS_URL)
        ctx = {STATE: WorkerState(engine=engine, policy=RetryPolicy(), queue_name=settings.queue_name), "redis": redis}
        try:
            async with exclusive(redis, key=lock_key(settings.queue_name)) as held:  # another worker's run
                assert held
                assert await job.coroutine(ctx) is None
            async with exclusive(redis, key=lock_key("another-installation")):  # shares the Redis only
                summary = await job.coroutine(ctx)
            async with engine.connect() as conn:
                row = (await conn.execute(select(InvoicePosition.__table__)
                                          .where(InvoicePosition.__table__.c.invoice_id == invoice.id))).one()
        finally:
            await redis.aclose()
            await engine.dispose()

    assert summary["status"] == "completed" and summary["matches"]
    # The events the webhooks never brought are backfilled from the Events API: nothing left to correct.
    assert summary["eventsBackfilled"] == 3 and summary["correctionsPosted"] == 0
    assert (row.status, row.total, row.amount_paid, row.amount_due) == ("open", 196000, 50000, 146000)
