"""`vinr-recon queue convert`: the jobs an earlier version pickled, rewritten in the data-only format.

Run once after the upgrade, when no process of the earlier version is left (its receivers may
have queued pickles until they stopped). It converts the pickled jobs still waiting in the
queue, in place, and queues again the ones a new worker refused meanwhile (kept in the queue's
refused hash). New workers may run meanwhile: a job one of them holds is left alone (it is
being refused, so the pass over the refused hash takes it). A pickle is read by an unpickler
that builds strings, bytes, numbers, lists, tuples and dicts and nothing else: it never looks
up a global, so nothing in it can be called. One that needs more is left where it is and
reported; a worker refuses it on its turn.
"""

from __future__ import annotations

import asyncio
import io
import pickle
from dataclasses import dataclass, field
from typing import Any

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from vinr_recon.jobformat import NotDataJob, dumps, is_data_job
from vinr_recon.jobs import job_key, refused_key, result_key

PLAIN = (str, bytes, int, float, bool, type(None))
# A job of the earlier version is a dict of these fields (arq.jobs.serialize_job).
JOB_FIELDS = {"t", "f", "a", "k", "et"}

# KEYS: job key, its in-progress key. Rewrites the job only if it is still the bytes that were
# read and no worker holds it (one that does is refusing it: it lands in the refused hash).
REWRITE_SCRIPT = """\
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""
# Passes over the queue while a worker held a pickled job (it moves to the refused hash).
PASSES, PAUSE = 5, 0.2
# KEYS: refused hash, job key, result key, queue. ARGV: job id, bytes as refused, new bytes, score.
# Queues the job again unless it (or its result) is there by now; forgets the refused copy.
REQUEUE_SCRIPT = """\
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return -1
end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2], KEYS[3]) > 0 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
return 1
"""


class DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler for plain data: every global (class, function) is refused, never imported."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused the global {module}.{name}: only plain data is read")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id: only plain data is read")


def unpickle_job(raw: bytes) -> dict[str, Any]:
    """An earlier version's pickled job as plain data; `NotDataJob` if it holds anything else."""
    try:
        data = DataOnlyUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, RecursionError...
        raise NotDataJob(f"not a pickle of plain data: {exc}") from None
    if not (isinstance(data, dict) and JOB_FIELDS <= set(data) and isinstance(data["f"], str)
            and isinstance(data["a"], tuple | list) and isinstance(data["k"], dict)):
        raise NotDataJob("not an arq job")
    _check_plain(data)
    return data


def _check_plain(value: Any, depth: int = 0) -> None:
    if depth > 32:
        raise NotDataJob("nested too deep for a job")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotDataJob(f"a key of type {type(key).__name__}")
            _check_plain(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_plain(item, depth + 1)
    elif not isinstance(value, PLAIN):
        raise NotDataJob(f"a value of type {type(value).__name__}")


@dataclass
class Conversion:
    converted: list[str] = field(default_factory=list)  # rewritten in place in the queue
    requeued: list[str] = field(default_factory=list)  # refused by a worker, queued again
    dropped: list[str] = field(default_factory=list)  # refused, but its job or result is there by now
    refused: list[tuple[str, str]] = field(default_factory=list)  # (job id, why): left as they are
    held: list[str] = field(default_factory=list)  # in a worker's hands at the last pass: run again later


async def convert_queue(redis: Redis, queue_name: str) -> Conversion:
    """Convert the pickled jobs of `queue_name` (a redis.asyncio client) as the module says."""
    done = Conversion()
    for attempt in range(PASSES):
        if attempt:
            await asyncio.sleep(PAUSE)
        done.held = await _pass(redis, queue_name, done)
        if not done.held:
            break
    return done


async def _pass(redis: Redis, queue_name: str, done: Conversion) -> list[str]:
    """One pass over the queue, then the refused hash; the pickled jobs a worker held."""
    held: list[str] = []
    seen = {job_id for job_id, _ in done.refused}
    async for member, _ in redis.zscan_iter(queue_name, count=1000):
        job_id = member.decode()
        raw = await redis.get(job_key(job_id))
        if raw is None or is_data_job(raw) or job_id in seen:
            continue
        try:
            new = dumps(unpickle_job(raw))
        except NotDataJob as exc:
            done.refused.append((job_id, str(exc)))
            seen.add(job_id)
            continue
        outcome = await _eval(redis, REWRITE_SCRIPT, [job_key(job_id), in_progress_key_prefix + job_id], [raw, new])
        if outcome == 1:
            done.converted.append(job_id)
        elif outcome == -1:
            held.append(job_id)
    refused = refused_key(queue_name)
    async for field_, raw in redis.hscan_iter(refused, count=1000):
        job_id = field_.decode()
        if job_id in seen:
            continue
        try:
            data = unpickle_job(raw)
        except NotDataJob as exc:
            done.refused.append((job_id, str(exc)))
            continue
        outcome = await _eval(redis, REQUEUE_SCRIPT, [refused, job_key(job_id), result_key(job_id), queue_name],
                              [job_id, raw, dumps(data), int(data["et"])])
        if outcome == 1:
            done.requeued.append(job_id)
        elif outcome == 0:
            done.dropped.append(job_id)
    return held


async def _eval(redis: Redis, script: str, keys: list[str], args: list[str | bytes | int]) -> object:
    """EVAL `script` with `keys` and `args`: what it returns."""
    # redis-py annotates EVAL's keys and arguments as text only, and its answer as not always awaitable.
    return await redis.eval(script, len(keys), *keys, *args)  # type: ignore[arg-type, misc]
