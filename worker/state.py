"""The worker's resources, typed, in one object (as the receiver's are in its `ReceiverState`).

worker.settings builds a `WorkerState` in arq's `on_startup` and closes it in `on_shutdown`;
arq's `ctx` holds it under `STATE`, beside what arq itself puts there (`redis`, `job_id`,
`job_try`, `score`, `enqueue_time`), which stays arq's. Jobs read `state(ctx).engine` etc.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.outbox import EVERY_CHANNEL, NO_CHANNELS, Channels
from worker.batching import Batcher
from worker.metrics import MetricsServer, WorkerMetrics

if TYPE_CHECKING:  # only named: worker.jobs imports this module, and worker.notices imports the jobs
    from worker.jobs import RetryPolicy
    from worker.notices import Notifier

STATE = "state"  # the key of arq's ctx that holds the WorkerState


@dataclass
class WorkerState:
    """What every job of one worker shares, from start-up to shutdown."""

    engine: AsyncEngine
    policy: RetryPolicy  # an event's retries; each transaction gets its attempt_timeout
    queue_name: str
    metrics: WorkerMetrics | None = None  # none in a state a test builds
    write_lock: asyncio.Lock | None = None  # SQLite's one writer; none on PostgreSQL
    batcher: Batcher | None = None  # group commit; none with `--no-batch`
    # The channels a fact's notices are staged on, and those this worker delivers at once.
    channels: Channels = NO_CHANNELS
    deliverable: Channels = EVERY_CHANNEL
    notifier: Notifier | None = None
    notice_policy: RetryPolicy | None = None  # none: worker.notices' NOTICE_RETRY
    metrics_server: MetricsServer | None = None  # while `/metrics` is served

    def writing(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Held around every write transaction. SQLite has one writer at a time: queueing writers
        here beats them spinning on its lock; on PostgreSQL it holds nothing."""
        return self.write_lock if self.write_lock is not None else contextlib.nullcontext()


def state(ctx: dict[str, Any]) -> WorkerState:
    """The worker's state in arq's `ctx` (raises KeyError before start-up)."""
    found = ctx[STATE]
    if not isinstance(found, WorkerState):
        raise TypeError(f"ctx[{STATE!r}] is a {type(found).__name__}, not a WorkerState")
    return found
