"""Benchmark: `vinr-recon serve` against slow and hostile clients at the socket.

    .venv/bin/python bench/slowclients.py [--connections 500] [--attacks idle,stalled_body,...]

For each attack, a fresh `vinr-recon serve` process (on the machine's Redis, a queue of its
own) and `--connections` connections opened at once from this process, each doing the attack:

- `idle`: connects and sends nothing;
- `half_line`: sends half a request line and stops;
- `trickle`: sends a request line, then one header byte a second;
- `stalled_body`: declares a 1 MiB - 1 byte body, sends all of it but the last byte, stops;
- `endless_headers`: sends header lines without end (up to 4.4 MB each);
- `huge_signature`: one 8 MB `x-vinr-signature` header, then a body.

While they are held, one properly signed delivery on a connection of its own: its status and
latency. Printed: the receiver's RSS before and at its peak (VmHWM, reset before each attack),
how the attacking connections were answered (status line, or closed), how many were still
open `--grace` s after the deadline, and the signed delivery's answer. `--env NAME=VALUE`
passes settings to the receiver (e.g. `RECEIVER_HEADER_TIMEOUT=2`).

`--server` runs the same app under another server, configured as closely as each allows, to
compare: `uvicorn-httptools` (as `vinr-recon serve` ran before receiver.server), `uvicorn-h11` (h11's head limit, `limit_concurrency`), `hypercorn` (its head limit and
`read_timeout`), `granian` (`--http1-header-read-timeout`, `--http1-buffer-size`,
`--backpressure`). Those two are not the project's dependencies: install them apart, e.g.
`pip install --target /tmp/alt hypercorn granian` and `PYTHONPATH=/tmp/alt`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # port_support

from port_support import free_port, wait_listening  # noqa: E402
from vinr.signature import sign  # noqa: E402

SECRET = "whsec_bench_" + "s" * 24
PATH = "/webhooks/vinr"
MIB = 1024 * 1024
ATTACKS = ["idle", "half_line", "trickle", "stalled_body", "endless_headers", "huge_signature"]


# --- the receiver ------------------------------------------------------------------------


class Receiver:
    """`vinr-recon serve` on a free port, a queue of its own, its log in `workdir`."""

    def __init__(self, workdir: Path, extra_env: dict[str, str], server: str = "vinr-recon") -> None:
        self.port = free_port()
        self.queue = f"arq:queue:slowbench:{os.getpid()}:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VINR_", "LEDGER_", "RECEIVER_"))}
        env.update(VINR_WEBHOOK_SECRET=SECRET, REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                   QUEUE_NAME=self.queue, DATABASE_URL=f"sqlite:///{workdir / 'ledger.db'}", LOG_LEVEL="WARNING",
                   **extra_env)
        command = [str(Path(sys.executable).with_name("vinr-recon")), "serve", "--port", str(self.port)]
        if server == "granian":
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
            command = [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                       "--port", str(self.port), "--workers", "1", "--http", "1", "--no-ws", "--factory",
                       "--backpressure", "1000", "--http1-header-read-timeout", "5000",
                       "--http1-buffer-size", str(16 * 1024), "--log-level", "warning", "slowclients:granian_app"]
        elif server != "vinr-recon":
            command = [sys.executable, __file__, "--serve", server, "--port", str(self.port)]
        self.log = (workdir / f"receiver-{self.port}.log").open("wb")
        self.process = subprocess.Popen(command, env=env, cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT)
        wait_listening("127.0.0.1", self.port)
        time.sleep(0.3)  # let it settle after its first accept

    def pids(self) -> list[int]:
        """The server's process and its children (granian serves from a child process)."""
        import psutil

        return [self.process.pid, *(child.pid for child in psutil.Process(self.process.pid).children(recursive=True))]

    def status(self, field: str) -> float:
        """A figure of /proc/<pid>/status in MiB, summed over `pids()`: VmRSS now, VmHWM the peak since the reset."""
        total = 0
        for pid in self.pids():
            text = Path(f"/proc/{pid}/status").read_text()
            total += int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))
        return total / 1024

    def reset_peak(self) -> None:
        for pid in self.pids():
            Path(f"/proc/{pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        import redis

        client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        ids = [m.decode() for m in client.zrange(self.queue, 0, -1)]
        client.delete(self.queue, *(k for i in ids for k in (f"arq:job:{i}", f"arq:result:{i}")))
        client.close()


def the_app():
    from receiver.app import create_app
    from vinr_recon.logging import configure_logging
    from vinr_recon.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level)
    return settings, create_app(settings)


def granian_app():
    """The receiver's app for granian (`--factory slowclients:granian_app`)."""
    return the_app()[1]


def serve(server: str, port: int) -> None:
    """The receiver's app under `server`, with what that server offers against slow clients."""
    settings, app = the_app()
    if server == "uvicorn-httptools":  # as `vinr-recon serve` ran before receiver.server
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False, http="httptools",
                    loop="uvloop", ws="none", lifespan="on")
    elif server == "uvicorn-h11":
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False, http="h11", loop="uvloop",
                    ws="none", lifespan="on", h11_max_incomplete_event_size=settings.receiver_max_header_bytes,
                    limit_concurrency=settings.receiver_max_connections)
    elif server == "hypercorn":
        import uvloop
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.h11_max_incomplete_size = settings.receiver_max_header_bytes
        config.read_timeout = int(settings.receiver_header_timeout)
        config.backlog = 2048
        config.accesslog = None
        uvloop.run(hypercorn_serve(app, config))


# --- the attacks -------------------------------------------------------------------------


def head(extra: str = "", length: int | None = None) -> bytes:
    line = f"POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    if length is not None:
        line += f"content-length: {length}\r\n"
    return (line + extra).encode()


class Attacker:
    """One attacking connection: opens, attacks until stopped or closed, remembers the answer."""

    def __init__(self, kind: str, port: int) -> None:
        self.kind, self.port = kind, port
        self.answer: str = "open"
        self.closed_at: float | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        try:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=MIB)
        except OSError:
            self.answer, self.closed_at = "connect failed", time.monotonic()

    async def attack(self) -> None:
        if self.writer is None:
            return
        watcher = asyncio.ensure_future(self.watch())
        try:
            await self.send()
        except (OSError, asyncio.IncompleteReadError):
            pass
        await watcher

    async def send(self) -> None:
        write, kind = self.writer, self.kind
        if kind == "half_line":
            write.write(b"POST /webhooks/vi")
        elif kind == "trickle":
            write.write(b"POST /webhooks/vinr HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
            while self.closed_at is None:
                await write.drain()
                await asyncio.sleep(1)
                write.write(b"a")
        elif kind == "stalled_body":
            write.write(head(length=MIB - 1) + b"\r\n" + b"x" * (MIB - 2))
        elif kind == "endless_headers":
            write.write(head())
            line = b"x-endless: " + b"a" * 1000 + b"\r\n"
            for _ in range(4400):  # 4.4 MB
                if self.closed_at is not None:
                    break
                write.write(line)
                await write.drain()
        elif kind == "huge_signature":
            body = b'{"id": "evt_x"}'
            write.write(head(length=len(body)) + b"x-vinr-signature: t=1,v1=" + b"0" * (8 * MIB) + b"\r\n\r\n" + body)
        await write.drain()

    async def watch(self) -> None:
        """Wait for the server's answer or close; the first line of an answer is kept."""
        try:
            line = await self.reader.readline()
        except (OSError, ValueError, asyncio.IncompleteReadError):
            line = b""
        self.answer = line.decode(errors="replace").strip()[9:12] if line.startswith(b"HTTP/") else "closed"
        if line:
            try:
                while await self.reader.read(65536):
                    pass
            except OSError:
                pass
        self.closed_at = time.monotonic()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


async def signed_delivery(port: int) -> tuple[str, float]:
    """One properly signed delivery on a fresh connection: (status, seconds to the answer)."""
    now = int(time.time())
    body = json.dumps({"id": f"evt_slowbench_{time.time_ns()}", "object": "event", "type": "invoice.paid",
                       "created": now, "data": {"object": {"id": "inv_slowbench", "object": "invoice",
                                                           "status": "paid", "total": 1200}}}).encode()
    request = head(f"x-vinr-signature: {sign(body, SECRET, now)}\r\n", len(body)) + b"\r\n" + body
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    except (OSError, asyncio.TimeoutError):
        return "failed", time.monotonic() - started
    return line.decode(errors="replace")[9:12] or "closed", time.monotonic() - started


async def run_attack(receiver: Receiver, kind: str, connections: int, deadline: float, grace: float) -> dict:
    receiver.reset_peak()
    rss_before = receiver.status("VmRSS")
    attackers = [Attacker(kind, receiver.port) for _ in range(connections)]
    for start in range(0, connections, 100):  # opened in bursts of 100, as fast as the kernel takes them
        await asyncio.gather(*(a.open() for a in attackers[start:start + 100]))
    started = time.monotonic()
    tasks = [asyncio.ensure_future(a.attack()) for a in attackers]
    await asyncio.sleep(1.0)  # the attack under way: bodies and headers sent
    status, latency = await signed_delivery(receiver.port)
    await asyncio.sleep(max(0.0, started + deadline + grace - time.monotonic()))
    still_open = sum(a.closed_at is None for a in attackers)
    answers = Counter(a.answer if a.closed_at is not None else "open" for a in attackers)
    fast = sum(1 for a in attackers if a.closed_at is not None and a.closed_at - started < 1.0)
    rss_peak = receiver.status("VmHWM")
    for a in attackers:
        a.close()
    await asyncio.wait(tasks, timeout=5)
    for task in tasks:
        task.cancel()
    return {"attack": kind, "connections": connections, "rss_before": rss_before, "rss_peak": rss_peak,
            "still_open": still_open, "answers": dict(answers), "closed_within_1s": fast,
            "signed": status, "signed_ms": latency * 1000}


def report(rows: list[dict], args) -> None:
    print(f"\n{args.server}: {args.connections} connections per attack; still open counted {args.deadline + args.grace:.0f} s "
          f"after the attack began; settings: {' '.join(args.env) or 'defaults'}")
    print(f"\n{'attack':<17}{'conns':>6}{'RSS before':>11}{'RSS peak':>10}{'open after':>11}"
          f"{'signed':>8}{'latency ms':>11}   answers to the attackers")
    for r in rows:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r["answers"].items()))
        print(f"{r['attack']:<17}{r['connections']:>6}{r['rss_before']:>10.0f}M{r['rss_peak']:>9.0f}M"
              f"{r['still_open']:>11}{r['signed']:>8}{r['signed_ms']:>11.1f}   {answers}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--deadline", type=float, default=10.0,
                        help="seconds after which every attacking connection should be closed (default 10)")
    parser.add_argument("--grace", type=float, default=2.0)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the receiver")
    parser.add_argument("--server", default="vinr-recon", choices=["vinr-recon", "uvicorn-httptools", "uvicorn-h11", "hypercorn", "granian"])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.connections + 256)), hard))
    extra = dict(item.split("=", 1) for item in args.env)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.attacks.split(","):
            receiver = Receiver(Path(tmp), extra, args.server)
            try:
                rows.append(asyncio.run(run_attack(receiver, kind, args.connections, args.deadline, args.grace)))
            finally:
                receiver.stop()
            print(json.dumps(rows[-1]), flush=True)
    report(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
