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
