"""The queue's contract between the receiver (producer) and the worker (consumer).

Jobs are in arq's own format (arq.jobs.serialize_job, default pickle serializer), so an
unmodified arq worker runs them. A webhook job's id is the VINR event id: a duplicate
delivery finds the job (or its result) already there and is a no-op.
"""

# apply_event(ctx, event_id: str, event_type: str, body: bytes, headers: dict[str, str], received_at: float)
APPLY_EVENT = "apply_event"

# The headers that travel with a job so the worker stores what VINR sent (never the signature's secret).
KEPT_HEADERS = ("content-type", "user-agent", "x-vinr-signature", "x-request-id")


def job_key(job_id: str) -> str:
    return f"arq:job:{job_id}"


def result_key(job_id: str) -> str:
    return f"arq:result:{job_id}"


# deliver_notice(ctx, notice_id: int): one outbox row (ledger.outbox) sent on its channel. Its job id
# names the row (and the queue: arq's job ids are global to a Redis, the rows' ids only to one
# database), so enqueueing after the commit and the worker's sweep never run it twice at once.
# It keeps no result: once it has run, the row's status is what counts.
DELIVER_NOTICE = "deliver_notice"


def notice_job_id(queue_name: str, notice_id: int) -> str:
    return f"notice:{queue_name}:{notice_id}"


async def enqueue_notices(redis, queue_name: str, notice_ids) -> None:
    """Queue a delivery job for each staged notice (`redis`: an arq `ArqRedis`)."""
    for notice_id in dict.fromkeys(notice_ids):
        await redis.enqueue_job(DELIVER_NOTICE, notice_id, _job_id=notice_job_id(queue_name, notice_id),
                                _queue_name=queue_name)
