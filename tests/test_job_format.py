"""Jobs in a data-only format on every side (issue 16): a pickle in the queue is refused, logged,
counted and kept aside, never run; `vinr-recon queue convert` carries an earlier version's
pickled jobs over without ever unpickling anything but plain data.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import msgpack
import pytest
from arq.connections import ArqRedis, create_pool
from arq.jobs import SerializationError, serialize_job, serialize_result
from pydantic import SecretStr

from conftest import copy_of, unique
from ledger.deadletters import Letter
from lifecycles import Event, booked, drain, snapshot
from vinr_recon.convert import convert_queue, unpickle_job
from vinr_recon.jobformat import NotDataJob, dumps, kind_of, loads
from vinr_recon.jobs import APPLY_EVENT, enqueue_notices, job_key, queue_replays, refused_key
from worker.settings import Worker, worker_settings


class RunsACommand:
    """Unpickled, runs `touch path`: what anyone who can write to the Redis could queue."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return subprocess.call, (["touch", self.path],)


@pytest.fixture
def installation(settings, tmp_path, sqlite_template):
    return settings.model_copy(update={"database_url": copy_of(sqlite_template, tmp_path / "ledger.db")})


def old_job(*args, when_ms: int | None = None) -> bytes:
    """An `apply_event` job as the earlier version wrote it: arq's default serializer, pickle."""
    return serialize_job(APPLY_EVENT, args, {}, None, when_ms or int(time.time() * 1000))


def old_event_job(event: Event) -> bytes:
    return old_job(event.id, event.type, event.body, {"content-type": "application/json"}, time.time())


async def put(redis, queue_name: str, job_id: str, raw: bytes) -> None:
    """Straight into the queue, as the earlier receiver (or an intruder) did."""
    await redis.set(job_key(job_id), raw)
    await redis.zadd(queue_name, {job_id: int(time.time() * 1000)})


def events(prefix: str) -> list[Event]:
    invoice = f"inv_{prefix}"
    return [Event(f"evt_{prefix}_{n}", kind, snapshot(invoice, status, 1000, paid), 1_763_800_000 + n)
            for n, (kind, status, paid) in enumerate([("invoice.finalized", "open", 0),
                                                      ("invoice.updated", "open", 400),
                                                      ("invoice.paid", "paid", 1000)])]


def refused_count(worker, kind: str = "pickle") -> float:
    return worker.registry.get_sample_value("vinr_jobs_refused_total", {"format": kind}) or 0


# --- the worker -------------------------------------------------------------------------------


async def test_a_pickled_job_that_would_run_a_command_is_refused_and_never_run(installation, redis, tmp_path,
                                                                               log_capture):
    ran = tmp_path / "the-command-ran"
    raw = old_job(RunsACommand(ran), "invoice.paid", b"{}", {}, time.time())
    job_id = unique("evt_intruder")
    await put(redis, installation.queue_name, job_id, raw)

    worker = await drain(installation)
    again = await drain(installation)  # nothing is left to try again

    assert not ran.exists(), "the pickle in the queue ran a command in the worker"
    assert await redis.zcard(installation.queue_name) == 0 and not await redis.exists(job_key(job_id))
    assert await redis.hget(refused_key(installation.queue_name), job_id) == raw  # kept as found
    assert refused_count(worker) == 1 and worker.jobs_complete == 0
    assert (again.jobs_complete, again.jobs_failed, refused_count(again)) == (0, 0, 0)
    [line] = [line for line in log_capture.lines() if line.get("event", "").startswith("job refused")]
    assert (line["job_id"], line["format"], line["level"]) == (job_id, "pickle", "error")
    assert await booked(installation) == {}


async def test_the_worker_runs_data_only_jobs_beside_a_refused_one(installation, redis, tmp_path):
    good = events(unique("mixed"))
    for event in good:
        await put(redis, installation.queue_name, event.id, serialize_job(
            APPLY_EVENT, (event.id, event.type, event.body, {}, time.time()), {}, None, int(time.time() * 1000),
            serializer=dumps))
    await put(redis, installation.queue_name, unique("evt_junk"), b"\x00not a job at all")
    worker = await drain(installation)
    assert await booked(installation) == {event.id: "applied" for event in good}
    assert refused_count(worker, "unknown") == 1 and worker.jobs_complete == 3


# --- the format -------------------------------------------------------------------------------


def test_a_job_round_trips_with_its_bytes_and_headers():
    args = ("evt_1", "invoice.paid", b'{"id": "evt_1"}\xff', {"content-type": "application/json"}, 1.5)
    raw = serialize_job(APPLY_EVENT, args, {"replay": True, "dead_letter_id": 7}, None, 1234, serializer=dumps)
    assert msgpack.unpackb(raw)["f"] == APPLY_EVENT  # plain msgpack: any client can read it
    assert loads(raw) == {"t": None, "f": APPLY_EVENT, "a": list(args), "k": {"replay": True, "dead_letter_id": 7},
                          "et": 1234}


def test_a_job_whose_arguments_are_not_data_cannot_be_queued():
    with pytest.raises(SerializationError):
        serialize_job(APPLY_EVENT, (RunsACommand("/nowhere"),), {}, None, 1, serializer=dumps)


def test_a_failed_jobs_result_keeps_its_error_as_text():
    raw = serialize_result(APPLY_EVENT, (), {}, 1, 1, False, ValueError("boom"), 1, 2, "ref", "q", "id",
                           serializer=dumps)
    assert loads(raw)["r"] == "ValueError: boom"


@pytest.mark.parametrize("raw, kind", [
    (pickle.dumps({"f": APPLY_EVENT, "a": (), "k": {}, "t": None, "et": 1}), "pickle"),
    (pickle.dumps({"f": APPLY_EVENT}, protocol=0), "unknown"),
    (msgpack.packb([1, 2, 3]), "unknown"),
    (msgpack.packb({"f": APPLY_EVENT, "a": [], "k": {}, "x": msgpack.ExtType(5, b"")}), "unknown"),
    (b"", "unknown"),
])
def test_anything_but_a_msgpack_job_is_refused(raw, kind):
    with pytest.raises(NotDataJob):
        loads(raw)
    assert kind_of(raw) == kind


# --- the upgrade: vinr-recon queue convert ----------------------------------------------------


def test_the_converter_reads_plain_data_only(tmp_path):
    ran = tmp_path / "ran"
    assert unpickle_job(old_job("evt_1", "invoice.paid", b"{}", {"a": "b"}, 1.5, when_ms=9))["a"] == \
        ("evt_1", "invoice.paid", b"{}", {"a": "b"}, 1.5)
    for hostile in (old_job(RunsACommand(ran)), pickle.dumps(RunsACommand(ran)), old_job(time.gmtime(0)),
                    b"\x80\x04not a pickle"):
        with pytest.raises(NotDataJob):
            unpickle_job(hostile)
    assert not ran.exists()


def vinr_recon(settings, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REDIS_URL": settings.redis_url, "QUEUE_NAME": settings.queue_name,
           "DATABASE_URL": settings.database_url, "LOG_LEVEL": "WARNING"}
    script = os.path.join(os.path.dirname(sys.executable), "vinr-recon")
    return subprocess.run([script, *argv], env=env, capture_output=True, text=True, timeout=60)


async def test_an_upgrade_loses_none_of_the_jobs_the_earlier_version_queued(installation, redis):
    """Pickled jobs queued before the upgrade (some refused by a new worker already, some still
    queued by an earlier receiver) are all applied once `vinr-recon queue convert` has run."""
    before, during = events(unique("up_a")), events(unique("up_b"))
    for event in before:
        await put(redis, installation.queue_name, event.id, old_event_job(event))
    refusing = await drain(installation)  # a new worker started before the conversion
    assert refused_count(refusing) == 3 and await booked(installation) == {}
    for event in during:  # an earlier receiver still running
        await put(redis, installation.queue_name, event.id, old_event_job(event))

    done = vinr_recon(installation, "queue", "convert")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 queued jobs converted, 3 refused jobs converted and queued again" in done.stdout

    await drain(installation)
    assert await booked(installation) == {event.id: "applied" for event in before + during}
    assert await redis.hlen(refused_key(installation.queue_name)) == 0


async def test_the_converter_refuses_a_malicious_pickle_too(installation, redis, tmp_path):
    ran = tmp_path / "the-command-ran"
    hostile = old_job(RunsACommand(ran), "invoice.paid", b"{}", {}, time.time())
    queued_id, kept_id = unique("evt_queued"), unique("evt_kept")
    await put(redis, installation.queue_name, queued_id, hostile)
    await redis.hset(refused_key(installation.queue_name), kept_id, hostile)

    done = await convert_queue(redis, installation.queue_name)
    assert sorted(job_id for job_id, _ in done.refused) == sorted([queued_id, kept_id])
    assert "subprocess.call" in done.refused[0][1]
    assert (done.converted, done.requeued) == ([], [])
    assert not ran.exists()
    assert await redis.get(job_key(queued_id)) == hostile  # left for the worker, which refuses it
    assert await redis.hget(refused_key(installation.queue_name), kept_id) == hostile

    answer = vinr_recon(installation, "queue", "convert")
    assert answer.returncode == 1 and f"not converted: {queued_id}" in answer.stdout
    assert not ran.exists()


async def test_the_converter_leaves_a_job_in_a_workers_hands_alone(installation, redis, monkeypatch):
    """A worker holding a pickled job is refusing it (it moves to the refused hash): rewriting it
    under the worker would let the worker drop the converted job as failed."""
    monkeypatch.setattr("vinr_recon.convert.PAUSE", 0)
    event = events(unique("held"))[0]
    raw = old_event_job(event)
    await put(redis, installation.queue_name, event.id, raw)
    await redis.set(f"arq:in-progress:{event.id}", b"1", px=60_000)

    done = await convert_queue(redis, installation.queue_name)
    assert (done.converted, done.held) == ([], [event.id])
    assert await redis.get(job_key(event.id)) == raw

    await redis.delete(f"arq:in-progress:{event.id}")  # the worker let go
    done = await convert_queue(redis, installation.queue_name)
    assert (done.converted, done.held) == ([event.id], [])
    await drain(installation)
    assert await booked(installation) == {event.id: "applied"}


async def test_every_way_of_queueing_writes_data_only_jobs(installation, redis):
    """Notices (from a plain client, as reconciliation passes one), a dead letter's replay (from
    arq's pickling client, as the dashboard passes one) and the nightly cron run: all msgpack."""
    queue = installation.queue_name
    await enqueue_notices(redis, queue, [1, 2])
    letter = Letter(1, unique("evt"), "invoice.paid", b"{}", {}, datetime.now(UTC), "boom")
    [(_, replayed, fresh)] = await queue_replays(ArqRedis(redis.connection_pool), queue, [letter])
    assert fresh

    at = (datetime.now(UTC) + timedelta(hours=2)).replace(second=0, microsecond=0)
    settings = installation.model_copy(update={"vinr_api_key": SecretStr("key"), "reconcile_at": f"{at:%H:%M}"})
    worker = Worker(**worker_settings(settings), handle_signals=False)
    worker._pool = await create_pool(worker.redis_settings, job_serializer=worker.job_serializer,
                                     job_deserializer=worker.job_deserializer, default_queue_name=queue)
    try:
        await worker.run_cron(datetime.now(UTC), 0.5)
        await worker.run_cron(at - timedelta(seconds=0.5), 0.5)
    finally:
        await worker._pool.aclose()

    ids = [member.decode() for member in await redis.zrange(queue, 0, -1)]
    assert len(ids) == 4 and replayed in ids
    functions = sorted([loads(await redis.get(job_key(job_id)))["f"] for job_id in ids])
    assert functions == [APPLY_EVENT, "deliver_notice", "deliver_notice", f"reconcile_nightly:{queue}"]
