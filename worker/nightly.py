"""The nightly reconciliation as an arq cron job of `vinr-recon worker`.

Every worker schedules it; arq's unique cron job id and the reconciliation lock make sure one
run happens per night however many workers there are. The id is made of the job's name, which
carries the installation's queue name: two installations on one Redis each get their run.
Without `VINR_API_KEY` the worker still applies webhooks and says once, at start-up, that the
nightly run is off.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from arq.cron import CronJob, cron

from reconcile.service import reconcile_once
from vinr_recon.jobs import cron_name
from vinr_recon.settings import Settings
from worker.state import state

log = structlog.get_logger("worker.nightly")

# A run over a large merchant's history can take a while; arq's per-job timeout would kill it.
RUN_TIMEOUT = 4 * 3600


def nightly_reconciliation(settings: Settings) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]:
    async def reconcile_nightly(ctx: dict[str, Any]) -> dict[str, Any] | None:
        """One reconciliation with the worker's engine and arq's Redis; its report, or None if skipped."""
        report = await reconcile_once(settings, engine=state(ctx).engine, redis=ctx["redis"])
        if report is None:
            return None
        summary = report.as_dict()
        log.info("nightly reconciliation finished", run_id=report.run_id, status=report.status,
                 matches=report.matches, counts=summary["counts"], corrections=report.corrections_posted)
        return summary

    return reconcile_nightly


def nightly_cron(settings: Settings) -> list[CronJob]:
    """The cron job at `RECONCILE_AT` (UTC), or none when VINR_API_KEY is not set."""
    if settings.vinr_api_key is None:
        log.warning("nightly reconciliation is off: VINR_API_KEY is not set")
        return []
    hour, minute = (int(part) for part in settings.reconcile_at.split(":"))
    # A run the previous version queued under the bare name finds no function and fails unrun;
    # this night's run is queued under the new name all the same.
    # arq's WorkerCoroutine wants *args and **kwargs, which it never passes a cron job.
    job = nightly_reconciliation(settings)
    return [cron(job, name=cron_name(settings.queue_name, "reconcile_nightly"),  # type: ignore[arg-type]
                 hour=hour, minute=minute, timeout=RUN_TIMEOUT)]
