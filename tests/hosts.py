"""Test hosts on one machine (no tests here): network namespaces joined by a bridge of the run's
own, each with its own address, so that processes meet over a network that a test can cut.

    with Network() as net:
        db = net.add("db")                      # namespace vr<k>-db, address 10.213.<k>.<n>
        popen = db.run(["postgres", ...], env)  # a process inside it (`ip netns exec`)
        db.partition(); db.heal()               # its link down and up again (a silent cut)
        db.partition(peers=[other]); db.heal()  # only towards those hosts (blackhole routes)

A run takes a free slot k (1-254): a lock file held for the run's length, and no address of
10.213.<k>.0/24 on the machine. Everything it makes is named `vr<k>` + something (namespaces
`vr<k>-<name>`, the bridge `vr<k>br`, the root ends of the veth pairs `vr<k>h<n>`): on leaving,
or on taking a slot whose lock nobody holds (a dead run's leftovers), exactly those are deleted,
with the processes still running in those namespaces. The root namespace keeps its interfaces,
routes and firewall as they were: the only thing made there is the bridge, with the address
10.213.<k>.1 (`Network.gateway`), where the harness itself listens for what the hosts send it.

Needs root and `ip` (iproute2). `tc` on this machine has no qdisc modules (prio, netem), so a
partition is a link taken down or a blackhole route inside the host's own namespace.

Also a command: `python tests/hosts.py forward LISTEN_IP:PORT TARGET_IP:PORT...` forwards each
TCP connection to the next target in turn (a round-robin load balancer in front of receivers).
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

LOCKS = Path(os.environ.get("VINR_HOSTS_LOCKS", "/run/lock/vinr-recon-hosts"))
SUBNET = "10.213.{k}"


def unavailable() -> str | None:
    """Why test hosts cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces); CI runs as root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _namespace_pids(ns: str) -> list[int]:
    done = ip("netns", "pids", ns, check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def cleanup(prefix: str) -> list[str]:
    """Delete the namespaces named `prefix-*` (after SIGKILLing what still runs in them) and the
    links named `prefix*` of the root namespace; what it deleted. For a dead run's leftovers,
    and the end of a live one."""
    removed = []
    for line in ip("netns", "list").stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns.startswith(prefix + "-"):
            for pid in _namespace_pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while _namespace_pids(ns) and time.monotonic() < deadline:
                time.sleep(0.05)
            ip("netns", "delete", ns, check=False)
            removed.append(ns)
    for line in ip("-o", "link", "show").stdout.splitlines():
        match = re.match(r"\d+: ([^:@]+)", line)
        if match and re.fullmatch(re.escape(prefix) + r"(br|h\d+)", match.group(1)):
            ip("link", "delete", match.group(1), check=False)
            removed.append(match.group(1))
    return removed


class Host:
    """One test host: a namespace with loopback and one interface (eth0) on the run's bridge."""

    def __init__(self, network: Network, name: str, n: int) -> None:
        self.network, self.name, self.n = network, name, n
        self.ns = f"{network.prefix}-{name}"
        self.veth = f"{network.prefix}h{n}"  # the root namespace's end, a port of the bridge
        self.ip = f"{network.subnet}.{n}"
        self._blackholes: list[str] = []

    def create(self) -> None:
        ip("netns", "add", self.ns)
        ip("-n", self.ns, "link", "set", "lo", "up")
        ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        ip("link", "set", self.veth, "master", self.network.bridge, "up")
        ip("-n", self.ns, "addr", "add", f"{self.ip}/24", "dev", "eth0")
        ip("-n", self.ns, "link", "set", "eth0", "up")

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside this host (`ip netns exec` execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: list[str], env: dict[str, str] | None = None, *, log: Path | None = None,
            cwd: Path | None = None) -> subprocess.Popen:
        """Start `argv` inside this host, in a process group of its own, its output to `log`."""
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            return subprocess.Popen(self.command(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if log:
                out.close()

    def partition(self, peers: list[Host] | None = None) -> None:
        """Cut this host off: from everyone (its link down: packets vanish, no error tells the
        peers), or only from `peers` (blackhole routes in this host's namespace: what it sends
        them is dropped)."""
        if peers is None:
            ip("link", "set", self.veth, "down")
            return
        for peer in peers:
            ip("-n", self.ns, "route", "add", "blackhole", f"{peer.ip}/32")
            self._blackholes.append(peer.ip)

    def heal(self) -> None:
        ip("link", "set", self.veth, "up")
        while self._blackholes:
            ip("-n", self.ns, "route", "delete", "blackhole", f"{self._blackholes.pop()}/32", check=False)

    def __repr__(self) -> str:
        return f"Host({self.name} {self.ip})"


class Network:
    """The run's bridge and hosts; a context manager that deletes all of it on leaving."""

    def __init__(self) -> None:
        self.k = 0
        self.hosts: dict[str, Host] = {}
        self._lock = None
        self._numbers = itertools.count(10)

    prefix = property(lambda self: f"vr{self.k}")
    subnet = property(lambda self: SUBNET.format(k=self.k))
    bridge = property(lambda self: f"vr{self.k}br")
    gateway = property(lambda self: f"{self.subnet}.1")  # the root namespace's address on the bridge

    def __enter__(self) -> Network:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self._take_slot()
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _take_slot(self) -> None:
        LOCKS.mkdir(parents=True, exist_ok=True)
        for k in range(1, 255):
            lock = open(LOCKS / f"{k}.lock", "w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue  # a live run's
            cleanup(f"vr{k}")  # nobody holds the lock: whatever has the slot's names is a dead run's
            if f" {SUBNET.format(k=k)}." in ip("-o", "-4", "addr", "show").stdout:
                lock.close()
                continue  # the subnet is someone else's
            self.k, self._lock = k, lock
            return
        raise RuntimeError("no free slot for a test network (10.213.1-254.0/24 all taken)")

    def add(self, name: str) -> Host:
        host = Host(self, name, next(self._numbers))
        self.hosts[name] = host
        host.create()
        return host

    def close(self) -> None:
        if self._lock is None:
            return
        try:
            cleanup(self.prefix)
        finally:
            self._lock.close()
            self._lock = None


# --- a round-robin TCP forwarder (the load balancer in front of the receivers) ---------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def forward(listen: tuple[str, int], targets: list[tuple[str, int]]) -> None:
    turn = itertools.cycle(targets)

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*next(turn))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(connected, *listen)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "forward":
        asyncio.run(forward(_address(sys.argv[2]), [_address(a) for a in sys.argv[3:]]))
    else:
        sys.exit(__doc__)
