"""Helpers for the Sentinel tests (no tests here): a real Redis primary, a replica and three real
Sentinels on free loopback ports, as subprocesses of the fixture that owns them; `vinr-recon`
processes pointed at them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import redis

from receiver_support import free_port
from vinr_recon.demo.processes import Processes, vinr_recon

MASTER = "mymaster"
# Small, so a failover takes a few seconds: the primary is "down" after 1 s without an answer.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
FAILOVER_WAIT = 20.0  # seconds a test waits for a promotion before it fails


def wait_for(check, what: str, timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (redis.RedisError, OSError, httpx.TransportError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g} s")
        time.sleep(step)


class Node:
    """One redis-server (a data node or a Sentinel), its log in the fleet's folder."""

    def __init__(self, folder: Path, name: str, argv: list[str], port: int) -> None:
        self.folder, self.name, self.argv, self.port = folder, name, argv, port
        self.process: subprocess.Popen | None = None
        self._client: redis.Redis | None = None

    def start(self) -> None:
        with open(self.folder / f"{self.name}.log", "ab") as log:
            self.process = subprocess.Popen(self.argv, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        wait_for(lambda: self.client().ping(), f"{self.name} did not answer PING", 10)

    def client(self) -> redis.Redis:
        """A client of this node (it reconnects after a restart)."""
        if self._client is None:
            self._client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        return self._client

    def send(self, signum: int) -> None:
        assert self.process is not None and self.process.poll() is None, f"{self.name} is not running"
        self.process.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused node would never see SIGTERM
            self.process.send_signal(signum)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
        if self._client is not None:
            self._client.close()
            self._client = None


class RedisFleet:
    """A primary, a replica of it and (with `sentinels`) that many Sentinels watching it."""

    def __init__(self, folder: Path, sentinels: int = 3) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        data = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]
        primary_port, replica_port = free_port(), free_port()
        self.primary = Node(folder, "primary", ["redis-server", "--port", str(primary_port), *data], primary_port)
        self.replica = Node(folder, "replica", ["redis-server", "--port", str(replica_port), *data,
                                                "--replicaof", "127.0.0.1", str(primary_port)], replica_port)
        self.sentinels = []
        for n in range(sentinels):
            port = free_port()
            conf = folder / f"sentinel-{n}.conf"  # Sentinel rewrites its file: one each
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {folder}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self.sentinels.append(Node(folder, f"sentinel-{n}", ["redis-server", str(conf), "--sentinel"], port))

    @property
    def sentinel_list(self) -> str:
        """REDIS_SENTINELS for this fleet."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        self.wait_replica_online()
        for node in self.sentinels:
            node.start()
        if self.sentinels:
            # Before a failover can happen, each Sentinel must know the replica and the others.
            wait_for(self._sentinels_acquainted, "the Sentinels did not find the replica and each other", 15)

    def _sentinels_acquainted(self) -> bool:
        for node in self.sentinels:
            state = node.client().sentinel_master(MASTER)
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < len(self.sentinels) - 1:
                return False
        return True

    def named_primary(self) -> int | None:
        """The port the Sentinels agree is the primary (None while they disagree)."""
        ports = {int(node.client().sentinel_get_master_addr_by_name(MASTER)[1]) for node in self.sentinels}
        return ports.pop() if len(ports) == 1 else None

    def wait_failover(self) -> None:
        """Until every Sentinel names the replica and the replica says it is the primary."""
        wait_for(lambda: self.named_primary() == self.replica.port
                 and self.replica.client().info("replication")["role"] == "master",
                 "Sentinel did not promote the replica", FAILOVER_WAIT)

    def wait_replica_online(self) -> None:
        def online() -> bool:
            info = self.primary.client().info("replication")
            return info.get("connected_slaves", 0) >= 1 and info["slave0"]["state"] == "online"
        wait_for(online, "the replica did not catch up with the primary", 15)

    def close(self) -> None:
        for node in [*self.sentinels, self.replica, self.primary]:
            node.stop(signal.SIGKILL)


class Command:
    """`vinr-recon <args>` started the demo's way: in its own process group, its log in a file."""

    def __init__(self, folder: Path, name: str, env: dict[str, str], *args: str) -> None:
        self._processes = Processes(folder, env)
        self.child = self._processes.start(name, vinr_recon(*args))

    def log(self) -> str:
        return self.child.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.child.alive()

    def stop(self) -> None:
        self._processes.stop_all()


def service_env(**settings: str) -> dict[str, str]:
    """The environment of a `vinr-recon` process: no setting of the developer's, then `settings`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VINR_", "LEDGER_", "DATABASE_", "REDIS_", "QUEUE_", "SMTP_", "ALERT_", "FULFIL"))}
    return {**env, "LOG_LEVEL": "INFO", **settings}
