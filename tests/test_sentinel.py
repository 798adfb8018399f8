"""Redis Sentinel and replicated acknowledgement, with real parts: a Redis primary, a replica and
three Sentinels on loopback (tests/sentinel_support.py), `vinr-recon serve` and `vinr-recon
worker` as processes. A failover happens under them; they are not restarted."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import httpx
import pytest
from arq.connections import create_pool

from conftest import API_TOKEN, WEBHOOK_SECRET, unique
from receiver_support import event_body, free_port, signed
from sentinel_support import MASTER, Command, RedisFleet, service_env, wait_for
from vinr_recon.jobformat import JOB_FORMAT
from vinr_recon.jobs import event_job_id, job_key
from vinr_recon.redis_connect import arq_redis_settings, primary_answers, queue_pool, redis_for
from vinr_recon.settings import ConfigurationError, Settings, check_redis

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


@pytest.fixture
def fleet(tmp_path):
    """A primary, its replica and three Sentinels, killed at the end whatever happened."""
    nodes = RedisFleet(tmp_path / "redis")
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.close()


@pytest.fixture(scope="module")
def calm_fleet(tmp_path_factory):
    """A fleet no test of this module fails over (shared, so started once)."""
    nodes = RedisFleet(tmp_path_factory.mktemp("sentinel") / "redis")
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.close()


@pytest.fixture
def pair(tmp_path):
    """A primary and its replica, no Sentinel."""
    nodes = RedisFleet(tmp_path / "redis", sentinels=0)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.close()


class Receiver(Command):
    """`vinr-recon serve` on a free port, up (it answers /healthz)."""

    def __init__(self, folder, env, name: str = "receiver") -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        super().__init__(folder, name, env, "serve", "--port", self.url.rsplit(":", 1)[1])
        self.http = httpx.Client(base_url=self.url, timeout=10, headers={"Authorization": f"Bearer {API_TOKEN}"})
        wait_for(lambda: self.alive() and self.http.get("/healthz").status_code == 200 or not self.alive(),
                 "the receiver did not start", 20)
        assert self.alive(), self.log()

    def deliver(self, body: bytes) -> httpx.Response:
        return self.http.post("/webhooks/vinr", content=body, headers=signed(body))

    def ready(self) -> httpx.Response:
        return self.http.get("/readyz")

    def applied(self, body: bytes) -> bool:
        """The ledger (through /api) has the invoice of `body`'s event as it says."""
        invoice = json.loads(body)["data"]["object"]
        answer = self.http.get(f"/api/invoices/{invoice['id']}")
        return answer.status_code == 200 and answer.json()["status"] == invoice["status"]

    def stop(self) -> None:
        self.http.close()
        super().stop()


def started(processes: list[Command], command: Command) -> Command:
    processes.append(command)
    return command


@pytest.fixture
def processes():
    running: list[Command] = []
    yield running
    for command in running:
        command.stop()


# --- Settings -----------------------------------------------------------------------------


def test_sentinels_are_host_port_pairs_ipv6_in_brackets():
    settings = Settings(_env_file=None, redis_sentinels=" s1:26379, [::1]:26380 ,")
    assert settings.sentinel_addresses == [("s1", 26379), ("::1", 26380)]
    assert Settings(_env_file=None).sentinel_addresses == []  # REDIS_URL serves


@pytest.mark.parametrize("setting, value", [
    ("REDIS_SENTINELS", "sentinel-1"), ("REDIS_SENTINELS", "sentinel-1:port"), ("REDIS_SENTINELS", ":26379"),
    ("REDIS_SENTINELS", "s1:70000"), ("REDIS_SENTINELS", " , "), ("REDIS_SENTINEL_MASTER", " "),
    ("REDIS_MIN_REPLICAS", "-1"),
])
def test_a_bad_redis_setting_is_named_and_refused(setting, value):
    with pytest.raises(ConfigurationError, match=setting):
        check_redis(Settings(_env_file=None, **{setting.lower(): value}))


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["replay"]])
def test_each_command_refuses_to_start_with_a_bad_sentinel_list_in_one_line(command, tmp_path):
    env = service_env(VINR_WEBHOOK_SECRET=WEBHOOK_SECRET, REDIS_SENTINELS="sentinel-1,sentinel-2:26379",
                      DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}")
    done = subprocess.run([sys.executable, "-m", "vinr_recon", *command], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "REDIS_SENTINELS must be host:port" in done.stderr


# --- Following the primary ----------------------------------------------------------------


@pytest.mark.slow
def test_the_receiver_and_a_worker_follow_a_failover_without_a_restart(fleet, ledger_url, tmp_path, processes):
    env = service_env(VINR_WEBHOOK_SECRET=WEBHOOK_SECRET, LEDGER_API_TOKEN=API_TOKEN, DATABASE_URL=ledger_url,
                      QUEUE_NAME=unique("arq:queue:sentinel"), REDIS_SENTINELS=fleet.sentinel_list,
                      REDIS_SENTINEL_MASTER=MASTER,
                      REDIS_URL="redis://127.0.0.1:1/0")  # nothing listens there: only the Sentinels lead to Redis
    receiver = started(processes, Receiver(tmp_path, env))
    worker = started(processes, Command(tmp_path, "worker", env, "worker"))
    wait_for(lambda: "worker started" in worker.log() or not worker.alive(), "the worker did not start", 20)
    assert worker.alive(), worker.log()
    assert receiver.ready().status_code == 200

    before = [event_body() for _ in range(3)]
    assert [receiver.deliver(body).status_code for body in before] == [200] * 3
    wait_for(lambda: all(map(receiver.applied, before)), "the events before the failover were not applied", 20)

    fleet.primary.stop(signal.SIGKILL)
    # Until Sentinel promotes the replica there is no primary: the receiver says so.
    unready = wait_for(lambda: (answer := receiver.ready()).status_code == 503 and answer, "readyz never said 503", 5)
    assert unready.json()["failed"] == ["redis"]
    fleet.wait_failover()

    after = [event_body() for _ in range(3)]
    assert [receiver.deliver(body).status_code for body in after] == [200] * 3
    wait_for(lambda: all(map(receiver.applied, after)), "the events after the failover were not applied", 30)
    assert receiver.ready().status_code == 200
    # The same processes, never restarted.
    assert receiver.alive() and worker.alive(), receiver.log()[-2000:] + worker.log()[-2000:]


async def test_every_kind_of_client_the_settings_give_reaches_the_primary_the_sentinels_name(calm_fleet, settings):
    settings = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0",  # never used with Sentinels
                                           "redis_sentinels": calm_fleet.sentinel_list})
    key = unique("sentinel:probe")
    client = redis_for(settings)
    queue = queue_pool(settings, JOB_FORMAT)
    arq_pool = await create_pool(arq_redis_settings(settings))
    try:
        await client.set(key, "1", ex=60)
        await primary_answers(client)  # what /readyz asks
        assert await queue.get(key) == await arq_pool.get(key) == b"1"
        assert calm_fleet.primary.client().get(key) == b"1"  # on the primary itself
    finally:
        for each in (client, queue, arq_pool):
            await each.aclose()  # ours close the Sentinels' connections too: an unclosed one fails the test
        for sentinel in arq_pool.connection_pool.sentinel_manager.sentinels:
            await sentinel.aclose()  # arq's pool leaves them open


@pytest.mark.slow
def test_a_sentinel_that_names_no_primary_is_redis_failing(calm_fleet, tmp_path, processes):
    env = service_env(VINR_WEBHOOK_SECRET=WEBHOOK_SECRET, DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
                      REDIS_SENTINELS=calm_fleet.sentinel_list, REDIS_SENTINEL_MASTER="not-watched",
                      QUEUE_NAME=unique("arq:queue:sentinel"))
    receiver = started(processes, Receiver(tmp_path, env))
    answer = receiver.ready()
    assert answer.status_code == 503
    assert "redis" in answer.json()["failed"] and answer.json()["checks"]["redis"] == "MasterNotFoundError"
    assert receiver.deliver(event_body()).status_code == 503  # VINR retries


# --- Replicated acknowledgement -----------------------------------------------------------


def replica_has(pair: RedisFleet, queue: str, body: bytes) -> bool:
    return bool(pair.replica.client().exists(job_key(event_job_id(queue, json.loads(body)["id"]))))


@pytest.mark.slow
def test_with_min_replicas_a_delivery_is_acknowledged_only_once_a_replica_has_it(pair, tmp_path, processes):
    queue = unique("arq:queue:sentinel")
    env = service_env(VINR_WEBHOOK_SECRET=WEBHOOK_SECRET, DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
                      REDIS_URL=f"redis://127.0.0.1:{pair.primary.port}/0", REDIS_MIN_REPLICAS="1", QUEUE_NAME=queue)
    receiver = started(processes, Receiver(tmp_path, env))
    first = event_body()
    assert receiver.deliver(first).status_code == 200
    assert replica_has(pair, queue, first)  # acknowledged: the replica has it already

    pair.replica.stop()
    wait_for(lambda: pair.primary.client().info("replication")["connected_slaves"] == 0, "the replica stayed", 5)
    second = event_body()
    assert receiver.deliver(second).status_code == 503
    assert "reached 0 of 1 replicas" in receiver.log()

    pair.replica.start()
    pair.wait_replica_online()
    third = event_body()
    assert [receiver.deliver(body).status_code for body in (second, third)] == [200, 200]  # VINR's retry, a new one
    assert replica_has(pair, queue, second) and replica_has(pair, queue, third)


@pytest.mark.slow
def test_a_retry_at_another_receiver_is_acknowledged_only_once_the_replica_has_the_first_write(
        pair, tmp_path, processes):
    queue = unique("arq:queue:sentinel")
    env = service_env(VINR_WEBHOOK_SECRET=WEBHOOK_SECRET, DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
                      REDIS_URL=f"redis://127.0.0.1:{pair.primary.port}/0", REDIS_MIN_REPLICAS="1", QUEUE_NAME=queue)
    first, second = (started(processes, Receiver(tmp_path, env, name)) for name in ("receiver-a", "receiver-b"))
    body = event_body()
    pair.replica.send(signal.SIGSTOP)  # connected, but it acknowledges nothing more
    try:
        assert first.deliver(body).status_code == 503  # written to the primary only
        # VINR's retry lands on the other receiver: the event is already queued, but the replica
        # still lacks it, so it is not acknowledged either.
        assert second.deliver(body).status_code == 503
    finally:
        pair.replica.send(signal.SIGCONT)
    assert second.deliver(body).status_code == 200
    assert replica_has(pair, queue, body)
