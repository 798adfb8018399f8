"""The fast enqueue: one arq job per event, deduplicated and queued in one round trip.

arq's `enqueue_job` costs three round trips (WATCH, EXISTS, MULTI/EXEC). Here a Lua script does
the same atomically, and concurrent requests share its call: whatever is pending when Redis
answers one batch goes out as the next, in one EVALSHA. Each caller still returns only once
Redis has acknowledged its own write. (One call per batch rather than a pipeline of one call
per job: redis-py's per-command work made the pipeline cost 56 us of CPU a job against 24 here.)

The bytes stored are exactly `arq.jobs.serialize_job(...)` in the data-only format
(vinr_recon.jobformat) under arq's key names and the installation's job id
(vinr_recon.jobs.event_job_id), so an arq worker given that format runs the jobs.

With `min_replicas` (REDIS_MIN_REPLICAS) above 0, the script call and a `WAIT` go out together
in one pipeline on one connection, still one round trip a batch: its callers are answered once
the write reached that many replicas, so that a failover to one of them cannot lose it. A batch
of duplicates only writes a mark, so that its WAIT also covers the earlier write of the same
events (which may never have reached a replica: that caller got a 503).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from vinr_recon.coalesce import Coalescer
from vinr_recon.jobformat import dumps
from vinr_recon.jobs import APPLY_EVENT, event_job_id, job_key, result_key

# KEYS: the queue, then each job's job key and result key. ARGV: each job's id, bytes, score.
# For each job, in order: 0 if its job or its result exists, else store it with no expiry (an
# acknowledged event must never vanish before a worker runs it), queue it, and 1.
ENQUEUE_SCRIPT = """\
local queued = {}
for i = 1, #ARGV / 3 do
  local job, result = KEYS[2 * i], KEYS[2 * i + 1]
  if redis.call('EXISTS', job, result) == 0 then
    redis.call('SET', job, ARGV[3 * i - 1])
    redis.call('ZADD', KEYS[1], ARGV[3 * i], ARGV[3 * i - 2])
    queued[i] = 1
  else
    queued[i] = 0
  end
end
return queued
"""
ENQUEUE_SHA = hashlib.sha1(ENQUEUE_SCRIPT.encode()).hexdigest()
# The same, with one more key last (the queue's wait mark), bumped when the batch queued nothing:
# WAIT waits for the replicas to have this connection's last write, and the stream is in order.
REPLICATED_SCRIPT = ENQUEUE_SCRIPT.replace("return queued\n", """\
for i = 1, #queued do
  if queued[i] == 1 then return queued end
end
redis.call('INCR', KEYS[#KEYS])
return queued
""")
REPLICATED_SHA = hashlib.sha1(REPLICATED_SCRIPT.encode()).hexdigest()

# Every caller has its answer within this many seconds of handing its job over: a stuck Redis
# turns into a 503 well inside the receiver's 2 s promise.
DEADLINE = 1.5
# Jobs per script call: bounds how long one call holds Redis (a few microseconds a job).
MAX_BATCH = 256
# Longest a WAIT for replicas may block, in ms: under the receiver's socket timeout (1 s), and
# leaving the answer inside DEADLINE. A replica on the same network acknowledges in about 1 ms.
WAIT_MS = 500


def wait_mark_key(queue_name: str) -> str:
    """The key a batch of duplicates writes when acknowledgement waits for replicas."""
    return f"{queue_name}:wait-mark"


class QueueUnavailable(Exception):
    """Redis did not acknowledge the write (down, timed out, out of memory...): VINR must retry."""


class NotReplicated(QueueUnavailable):
    """The primary took the write, but fewer replicas than REDIS_MIN_REPLICAS acknowledged it in time."""


@dataclass(frozen=True, slots=True)
class Job:
    id: str  # the event id; its job id in a queue is event_job_id(queue, id)
    payload: bytes
    score: int


def webhook_job(
    event_id: str, event_type: str, body: bytes, headers: dict[str, str], received_at: float
) -> Job:
    """The `apply_event` job of one delivery (vinr_recon.jobs), queued to run now."""
    enqueue_ms = int(received_at * 1000)
    args = (event_id, event_type, body, headers, received_at)
    return Job(event_id, serialize_job(APPLY_EVENT, args, {}, None, enqueue_ms, serializer=dumps), enqueue_ms)


# A job handed over, with when (loop time): the oldest caller's deadline is its batch's.
Handed = tuple[Job, float]


class Enqueuer(Coalescer[Handed, bool]):
    """Queues jobs in `queue_name`; with `coalesce`, concurrent calls share one script call; with
    `min_replicas`, a write counts as acknowledged once that many replicas have it."""

    def __init__(self, redis: Redis, queue_name: str, *, coalesce: bool = True, min_replicas: int = 0) -> None:
        super().__init__()
        self._redis = redis
        self._queue = queue_name
        self._coalesce = coalesce
        self._min_replicas = min_replicas
        self.round_trips = 0  # script calls sent: with coalescing, far fewer than jobs

    async def enqueue(self, job: Job) -> bool:
        """True if this call queued the job, False if it (or its result) was already there.

        Returns only after Redis acknowledged the write; raises `QueueUnavailable` otherwise,
        within `DEADLINE` seconds either way.
        """
        loop = asyncio.get_running_loop()
        if not self._coalesce:
            (result,) = await self._send_or_errors([job], loop.time() + DEADLINE)
            return _outcome(result)
        return await self._submit((job, loop.time()))

    async def _take(self) -> list[tuple[Handed, asyncio.Future[bool]]]:
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        return batch

    async def _flush(self, batch: list[tuple[Handed, asyncio.Future[bool]]]) -> None:
        (_, oldest), _ = batch[0]
        try:
            results = await self._send_or_errors([job for (job, _), _ in batch], oldest + DEADLINE)
        except BaseException as exc:
            # Every waiter gets an answer, even when the flusher itself is cancelled.
            _settle(batch, [exc] * len(batch))
            raise
        _settle(batch, results)

    async def _send_or_errors(self, jobs: list[Job], deadline: float) -> list[object]:
        """Each job's result (1 queued, 0 already there) or the error that stands for it."""
        try:
            async with asyncio.timeout_at(deadline):
                if self._min_replicas:
                    return await self._send_replicated(jobs, deadline)
                return await self._send(jobs)
        except Exception as exc:  # refused, timed out, out of memory...: all mean "not acknowledged"
            return [exc] * len(jobs)

    def _keys_and_args(self, jobs: list[Job]) -> tuple[list[str], list[Arg]]:
        keys: list[str] = [self._queue]
        args: list[Arg] = []
        for job in jobs:
            job_id = event_job_id(self._queue, job.id)
            keys += (job_key(job_id), result_key(job_id))
            # redis-py sends a memoryview as a chunk of its own; bytes it would copy into its buffer.
            args += (job_id, memoryview(job.payload), job.score)
        return keys, args

    async def _send(self, jobs: list[Job]) -> list[object]:
        """One EVALSHA; after a Redis restart (NOSCRIPT), load the script and call again."""
        keys, args = self._keys_and_args(jobs)
        self.round_trips += 1
        try:
            results = await _evalsha(self._redis, ENQUEUE_SHA, keys, args)
        except NoScriptError:
            await self._redis.script_load(ENQUEUE_SCRIPT)
            self.round_trips += 1
            results = await _evalsha(self._redis, ENQUEUE_SHA, keys, args)
        return _checked(results, jobs)

    async def _send_replicated(self, jobs: list[Job], deadline: float) -> list[object]:
        """The script call and `WAIT min_replicas` in one pipeline; `NotReplicated` when fewer
        replicas acknowledged the write within WAIT_MS (or what is left of the deadline)."""
        keys, args = self._keys_and_args(jobs)
        keys.append(wait_mark_key(self._queue))
        left_ms = int((deadline - asyncio.get_running_loop().time()) * 1000) - 100
        wait_ms = max(1, min(WAIT_MS, left_ms))  # never 0: WAIT 0 blocks for ever
        for attempt in range(2):
            self.round_trips += 1
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(REPLICATED_SHA, len(keys), *keys, *args)  # type: ignore[arg-type]  # as _evalsha says
                pipe.wait(self._min_replicas, wait_ms)
                results, reached = await pipe.execute(raise_on_error=False)
            if not (isinstance(results, NoScriptError) and attempt == 0):
                break
            await self._redis.script_load(REPLICATED_SCRIPT)  # after a restart or a failover
            self.round_trips += 1
        for answer in (results, reached):
            if isinstance(answer, Exception):
                raise answer
        if reached < self._min_replicas:
            raise NotReplicated(f"the write reached {reached} of {self._min_replicas} replicas within {wait_ms} ms")
        return _checked(results, jobs)


# A script argument: the job id, its payload (a memoryview, sent as a chunk of its own), its score.
Arg = str | memoryview | int


async def _evalsha(redis: Redis, sha: str, keys: list[str], args: list[Arg]) -> list[object]:
    """EVALSHA of the script `sha` (the enqueue scripts answer a list)."""
    # redis-py's annotations take only str for keys and arguments (it sends bytes, memoryviews
    # and ints too) and share the synchronous client's `str | Awaitable` result.
    results: list[object] = await redis.evalsha(sha, len(keys), *keys, *args)  # type: ignore[arg-type, misc]
    return results


def _checked(results: list[object], jobs: list[Job]) -> list[object]:
    if len(results) != len(jobs):  # every caller must get its own answer, or none is trusted
        raise RuntimeError(f"enqueue script answered {len(results)} results for {len(jobs)} jobs")
    return results


def _outcome(result: object) -> bool:
    if isinstance(result, BaseException):
        raise QueueUnavailable(f"{type(result).__name__}: {result}") from result
    return bool(result)


def _settle(batch: list[tuple[Handed, asyncio.Future[bool]]], results: list[object]) -> None:
    for (_, future), result in zip(batch, results):
        if future.done():  # its caller is gone (cancelled): nobody to tell
            continue
        try:
            future.set_result(_outcome(result))
        except QueueUnavailable as exc:
            future.set_exception(exc)
