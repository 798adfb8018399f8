"""`vinr-recon worker --check`, the worker's health check (docker-compose.yml's), against a real
worker process on the test's own queue: healthy while it runs, unhealthy once it stopped, and
unhealthy within the interval of a worker killed without a chance to say goodbye."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from conftest import REDIS_URL, copy_of, unique
from worker.commands import HEALTH_CHECK_INTERVAL

pytestmark = pytest.mark.slow


def check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vinr_recon", "worker", "--check"], env=env,
                          capture_output=True, text=True, timeout=60)


def until(env: dict[str, str], status: int, worker: subprocess.Popen | None, timeout: float) -> str:
    """Run the check until it exits `status`; its one line then."""
    deadline = time.monotonic() + timeout
    while True:
        done = check(env)
        if done.returncode == status:
            assert len(done.stdout.strip().splitlines()) == 1 and not done.stderr, done.stdout + done.stderr
            return done.stdout.strip()
        if worker is not None:
            assert worker.poll() is None, "the worker ended"
        assert time.monotonic() < deadline, f"check never exited {status}: {done.stdout}{done.stderr}"
        time.sleep(0.5)


@pytest.fixture
def worker_env(tmp_path, sqlite_template):
    queue = unique("arq:queue:check")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("VINR_", "WORKER_"))}
    env |= {"DATABASE_URL": copy_of(sqlite_template, tmp_path / "ledger.db"), "REDIS_URL": REDIS_URL,
            "QUEUE_NAME": queue, "LOG_LEVEL": "INFO", "WORKER_METRICS_PORT": "0"}
    yield env
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.delete(*[key for key in client.scan_iter(match=f"{queue}*", count=1000)] or [queue])
    finally:
        client.close()


def start_worker(env: dict[str, str], cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vinr_recon", "worker"], env=env, cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_the_check_is_healthy_while_a_worker_runs_and_unhealthy_once_it_stopped(worker_env, tmp_path):
    before = check(worker_env)
    assert before.returncode == 1 and "no worker of queue" in before.stdout and worker_env["QUEUE_NAME"] in before.stdout

    worker = start_worker(worker_env, tmp_path)
    try:
        said = until(worker_env, 0, worker, timeout=60)
        assert said.startswith(f"healthy: a worker of queue {worker_env['QUEUE_NAME']} reported") and "j_complete=" in said
        # Another installation on the same Redis has no worker: its check is not fooled by this one.
        assert check(worker_env | {"QUEUE_NAME": unique("arq:queue:other")}).returncode == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    # A worker that stops says so at once (arq deletes its key on the way out).
    assert check(worker_env).returncode == 1


def test_a_killed_worker_is_unhealthy_within_the_interval(worker_env, tmp_path):
    worker = start_worker(worker_env, tmp_path)
    try:
        until(worker_env, 0, worker, timeout=60)
    finally:
        worker.kill()  # no shutdown: its key stays until it expires
        worker.wait(10)
    said = until(worker_env, 1, None, timeout=HEALTH_CHECK_INTERVAL + 30)
    assert said == f"unhealthy: no worker of queue {worker_env['QUEUE_NAME']} reported in the last " \
                   f"{HEALTH_CHECK_INTERVAL} s"


def test_the_check_says_when_redis_cannot_be_reached(worker_env):
    done = check(worker_env | {"REDIS_URL": "redis://:hunter2hunter2@127.0.0.1:9/0"})
    assert done.returncode == 1 and done.stdout.startswith("unhealthy: Redis cannot be reached")
    assert "hunter2" not in done.stdout + done.stderr and "Traceback" not in done.stderr
