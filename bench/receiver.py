"""Benchmark: the receiver against a bare Starlette POST handler, one core each.

    .venv/bin/python bench/receiver.py [--rounds 5] [--duration 4] [--connections 64] [--rate 1000]

In one run: a private redis-server, then each server in its own uvicorn process pinned to
core 0 (`taskset -c 0`), loaded from core 1 by wrk (if installed; a Python load generator
otherwise) with signed ~1 KB events, each with its own id. Prints req/s, p50 and p99 for the
bare handler, the receiver, the receiver without coalescing (one round trip per request) and the
receiver with REDIS_MIN_REPLICAS=1 (each batch's WAIT answered by a local replica of the private
redis-server), then a fixed-rate run at --rate req/s against the receiver (a Python open-loop
generator).

The servers run side by side (only one is loaded at a time) and take turns, --rounds times, so
that a slow spell of a shared machine falls on all of them alike; medians are reported, and
every round is printed with how busy the servers' core was with other processes. The CPU time
per request (from /proc) is the figure least disturbed by neighbours; `CPU ratio` compares those.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # port_support

from port_support import free_port, wait_listening  # noqa: E402
from vinr.signature import sign  # noqa: E402

SECRET = "whsec_bench_" + "s" * 24
SERVER_CORE, LOAD_CORE = "0", "1"
PATH = "/webhooks/vinr"

WRK_SCRIPT = r"""
local requests, n, i = {}, 0, 0
function init(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  local pos = 1
  while true do
    local s = string.find(data, "\0", pos, true)
    if not s then break end
    n = n + 1
    requests[n] = string.sub(data, pos, s - 1)
    pos = s + 1
  end
end
function request()
  i = i + 1
  if i > n then i = 1 end
  return requests[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non2xx": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


# --- the servers -------------------------------------------------------------------------

# As `vinr-recon serve` runs uvicorn (receiver/commands.py), for every server of the bench.
UVICORN = dict(log_config=None, access_log=False, http="httptools", loop="uvloop", ws="none")


def serve_bare(port: int) -> None:
    """A bare Starlette POST endpoint: read the body, answer the receiver's 200."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def handler(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"received": True})

    app = Starlette(routes=[Route(PATH, handler, methods=["POST"])])
    gc.freeze()  # as `vinr-recon serve` does
    uvicorn.run(app, host="127.0.0.1", port=port, **UVICORN)


def serve_uncoalesced(port: int) -> None:
    """The receiver as `vinr-recon serve` runs it, but one Redis round trip per request."""
    import uvicorn

    from receiver.app import create_app
    from vinr_recon.logging import configure_logging
    from vinr_recon.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level)
    app = create_app(settings, coalesce=False)
    gc.freeze()  # as `vinr-recon serve` does
    uvicorn.run(app, host="127.0.0.1", port=port, lifespan="on", **UVICORN)


def wait_for_replica(port: int, timeout: float = 20.0) -> None:
    """Until the redis-server on `port` has a replica online (it answers WAIT)."""
    import redis

    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + timeout
        while client.info("replication").get("slave0", {}).get("state") != "online":
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica online after {timeout} s")
            time.sleep(0.1)
    finally:
        client.close()


@contextmanager
def process(argv: list[str], port: int, env: dict[str, str] | None = None, log: Path | None = None):
    """A child process listening on `port`, stopped with SIGTERM on exit."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
    try:
        wait_listening("127.0.0.1", port)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


# --- the load ----------------------------------------------------------------------------


def event_body(event_id: str, created: int) -> bytes:
    """A realistic ~1 KB `invoice.paid` event."""
    invoice = {
        "id": "inv_" + event_id[4:], "object": "invoice", "customer": "cust_bench_0001", "status": "paid",
        "currency": "EUR", "subtotal": 196000, "total": 196000, "amountPaid": 196000, "amountDue": 0,
        "number": "INV-2026-000142", "collectionMethod": "send_invoice", "daysUntilDue": 30,
        "dueDate": created + 30 * 86400, "hostedInvoiceUrl": "https://pay.vinr.com/i/" + event_id,
        "invoicePdf": "https://pay.vinr.com/i/" + event_id + "/pdf",
        "metadata": {"projectId": "proj_2291", "accountManager": "am@example.com"},
        "lines": {"data": [
            {"id": "li_1", "description": "Support, March", "quantity": 8, "unitAmount": 9500, "amount": 76000},
            {"id": "li_2", "description": "Hosting, March", "quantity": 1, "unitAmount": 120000, "amount": 120000},
        ]},
        "attemptCount": 1, "lastPaymentError": None, "created": created, "finalizedAt": created,
        "paidAt": created, "voidedAt": None,
    }
    event = {"id": event_id, "object": "event", "type": "invoice.paid", "created": created,
             "livemode": False, "data": {"object": invoice}}
    return json.dumps(event).encode()


def signed_requests(prefix: str, count: int, port: int) -> list[bytes]:
    """`count` raw HTTP requests, each a distinct event signed now (valid for 300 s)."""
    now = int(time.time())
    requests = []
    for i in range(count):
        body = event_body(f"evt_{prefix}{i:08d}", now)
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"User-Agent: VINR-Webhooks/1.0\r\nx-vinr-signature: {sign(body, SECRET, now)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    return requests


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(port: int, requests: list[bytes], seconds: int, connections: int, workdir: Path) -> dict:
    data, script = workdir / "requests.bin", workdir / "bench.lua"
    data.write_bytes(b"\0".join(requests) + b"\0")
    script.write_text(WRK_SCRIPT)
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
            f"http://127.0.0.1:{port}{PATH}", "--", str(data)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    return {
        "rps": summary["requests"] / (summary["duration_us"] / 1e6),
        "p50_ms": summary["p50_us"] / 1000, "p99_ms": summary["p99_us"] / 1000,
        "requests": summary["requests"], "failed": summary["non2xx"] + summary["errors"],
    }


class HttpConnection:
    """The least an HTTP/1.1 keep-alive client needs, so the load costs little CPU."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> HttpConnection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        marker = head.lower().index(b"content-length:") + 15
        await self.reader.readexactly(int(head[marker:head.index(b"\r\n", marker)]))
        return int(head[9:12])

    def close(self) -> None:
        self.writer.close()


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


def summarize(latencies: list[float], failed: int, elapsed: float) -> dict:
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed, "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000, "max_ms": latencies[-1] * 1000,
        "requests": len(latencies), "failed": failed,
    }


async def closed_loop(port: int, requests: list[bytes], seconds: int, connections: int) -> dict:
    """Python stand-in for wrk: `connections` clients, each sending as soon as it has an answer."""
    latencies: list[float] = []
    failed = 0
    deadline = time.perf_counter() + seconds
    cursor = iter(range(10**12))

    async def client() -> None:
        nonlocal failed
        conn = await HttpConnection.open(port)
        while (start := time.perf_counter()) < deadline:
            status = await conn.send(requests[next(cursor) % len(requests)])
            latencies.append(time.perf_counter() - start)
            failed += status != 200
        conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return summarize(latencies, failed, time.perf_counter() - began)


async def open_loop(port: int, requests: list[bytes], rate: int) -> dict:
    """Send `requests` at `rate` per second whatever the answers.

    Latency counts from the moment each request is written; `p99_due_ms` counts from when it was
    due instead, which adds this generator's own lateness (its timers tick in milliseconds and it
    shares a core). Connections are opened as needed and reused oldest first, so none idles into
    the server's keep-alive timeout; a request whose connection fails counts as failed.
    """
    loop = asyncio.get_running_loop()
    idle: deque[HttpConnection] = deque()
    latencies: list[float] = []
    since_due: list[float] = []
    failed = 0

    async def one(raw: bytes, due: float) -> None:
        nonlocal failed
        conn = idle.popleft() if idle else await HttpConnection.open(port)
        sent = loop.time()
        try:
            status = await conn.send(raw)
        except (OSError, asyncio.IncompleteReadError):
            conn.close()
            failed += 1
            return
        done = loop.time()
        latencies.append(done - sent)
        since_due.append(done - due)
        failed += status != 200
        idle.append(conn)

    start = loop.time() + 0.05
    tasks = []
    for i, raw in enumerate(requests):
        due = start + i / rate
        if (delay := due - loop.time()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(raw, due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    for conn in idle:
        conn.close()
    since_due.sort()
    return {**summarize(latencies, failed, elapsed), "p99_due_ms": percentile(since_due, 99) * 1000}


def load(port: int, requests: list[bytes], seconds: int, connections: int, workdir: Path) -> dict:
    if shutil.which("wrk"):
        return run_wrk(port, requests, seconds, connections, workdir)
    return asyncio.run(closed_loop(port, requests, seconds, connections))


# --- the run -----------------------------------------------------------------------------


def core_busy_seconds(core: str) -> float:
    """Non-idle CPU time of one core so far, whoever used it (Linux /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(value) for value in line.split()[1:]]
            return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def measure(pid: int, port: int, tag: str, args, workdir: Path) -> dict:
    """Load one server for `args.duration` s with fresh events; account for its core's CPU time."""
    requests = signed_requests(tag, args.expected_rps * args.duration, port)
    own, core = cpu_seconds(pid), core_busy_seconds(SERVER_CORE)
    result = load(port, requests, args.duration, args.connections, workdir)
    own, core = cpu_seconds(pid) - own, core_busy_seconds(SERVER_CORE) - core
    result["cpu_us"] = own / result["requests"] * 1e6
    # Time the server's core spent on other processes: a shared machine only slows a run down.
    result["others_pct"] = max(0.0, core - own) / args.duration * 100
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=4, help="seconds per closed-loop run")
    parser.add_argument("--rounds", type=int, default=5, help="turns each server takes; medians are reported")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=int, default=1000, help="req/s of the fixed-rate run (0: skip it)")
    parser.add_argument("--rate-duration", type=int, default=10)
    parser.add_argument("--expected-rps", type=int, default=14000, help="sizes the set of distinct events")
    parser.add_argument("--serve", choices=["bare", "uncoalesced"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "bare":
        serve_bare(args.port)
        return 0
    if args.serve == "uncoalesced":
        serve_uncoalesced(args.port)
        return 0

    os.sched_setaffinity(0, {int(LOAD_CORE)})  # this process generates load too; servers are pinned apart
    python, me = sys.executable, str(Path(__file__).resolve())
    pin = ["taskset", "-c", SERVER_CORE]
    workdir = Path(tempfile.mkdtemp(prefix="bench-receiver-"))
    redis_port, replica_port = free_port(), free_port()
    env = {
        **os.environ, "VINR_WEBHOOK_SECRET": SECRET, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "QUEUE_NAME": "arq:queue:bench", "DATABASE_URL": f"sqlite:///{workdir / 'ledger.db'}", "LOG_LEVEL": "INFO",
    }
    receiver = [*pin, str(Path(python).parent / "vinr-recon"), "serve", "--port"]
    # Each server's command line and what its environment adds.
    commands = {
        "bare Starlette": ([*pin, python, me, "--serve", "bare", "--port"], {}),
        "receiver": (receiver, {}),
        "receiver, no coalescing": ([*pin, python, me, "--serve", "uncoalesced", "--port"], {}),
        "receiver, 1 replica (WAIT)": (receiver, {"REDIS_MIN_REPLICAS": "1"}),
    }
    # In the run's own folder: the replica writes the primary's snapshot to disk when it syncs.
    redis_argv = ["taskset", "-c", LOAD_CORE, "redis-server", "--port", str(redis_port), "--save", "",
                  "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir)]
    replica_argv = ["taskset", "-c", LOAD_CORE, "redis-server", "--port", str(replica_port), "--save", "",
                    "--appendonly", "no", "--daemonize", "no", "--replicaof", "127.0.0.1", str(redis_port),
                    "--dir", str(workdir)]
    print(f"load: {'wrk' if shutil.which('wrk') else 'python'}, {args.connections} connections; "
          f"{args.rounds} rounds of {args.duration} s per server, taking turns; servers on core {SERVER_CORE}, "
          f"load and redis on core {LOAD_CORE}")
    rounds: dict[str, list[dict]] = {name: [] for name in commands}
    with ExitStack() as stack:
        stack.enter_context(process(redis_argv, redis_port))
        stack.enter_context(process(replica_argv, replica_port))
        wait_for_replica(redis_port)
        servers = {}
        for n, (name, (argv, extra)) in enumerate(commands.items()):
            port = free_port()
            server = stack.enter_context(process([*argv, str(port)], port, {**env, **extra},
                                                 log=workdir / f"server{n}.log"))
            servers[name] = (server.pid, port)
            load(port, signed_requests(f"w{n}_", 2000, port), 2, args.connections, workdir)  # warm up
        # Turns, so that a slow spell of the machine falls on every server alike.
        for turn in range(args.rounds):
            for n, (name, (pid, port)) in enumerate(servers.items()):
                result = measure(pid, port, f"r{turn}s{n}_", args, workdir)
                rounds[name].append(result)
                print(f"  round {turn + 1} {name:<24} {result['rps']:>7.0f} req/s, p99 {result['p99_ms']:6.2f} ms, "
                      f"{result['cpu_us']:4.0f} us CPU/req, core {SERVER_CORE} busy elsewhere "
                      f"{result['others_pct']:3.0f}%", flush=True)
        fixed = None
        if args.rate:
            pid, port = servers["receiver"]
            fixed = asyncio.run(open_loop(port, signed_requests("f_", args.rate * args.rate_duration, port), args.rate))
    shutil.rmtree(workdir, ignore_errors=True)
    report(rounds, fixed, args)
    return 0


def report(rounds: dict[str, list[dict]], fixed: dict | None, args) -> None:
    """Medians over the rounds. `ratio` is the median of each round's ratio to the bare handler
    in that same round; `CPU ratio` compares CPU time per request, what the req/s ratio would be
    with each server alone on its core."""
    median = statistics.median
    bare = rounds["bare Starlette"]
    print(f"\n{'server (median of ' + str(args.rounds) + ' rounds)':<34}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'ratio':>7}{'CPU us/req':>12}{'CPU ratio':>11}{'non-200':>9}")
    for name, runs in rounds.items():
        ratio = median(r["rps"] / b["rps"] for r, b in zip(runs, bare))
        cpu_ratio = median(b["cpu_us"] / r["cpu_us"] for r, b in zip(runs, bare))
        print(f"{name:<34}{median(r['rps'] for r in runs):>8.0f}{median(r['p50_ms'] for r in runs):>8.2f}"
              f"{median(r['p99_ms'] for r in runs):>8.2f}{ratio:>7.2f}{median(r['cpu_us'] for r in runs):>12.0f}"
              f"{cpu_ratio:>11.2f}{sum(r['failed'] for r in runs):>9}")
    ratio = median(r["rps"] / b["rps"] for r, b in zip(rounds["receiver"], bare))
    replicated = median(r["rps"] / b["rps"] for r, b in zip(rounds["receiver, 1 replica (WAIT)"], bare))
    print(f"\nreplicated acknowledgement: ratio to the bare handler {ratio:.2f} with REDIS_MIN_REPLICAS=0, "
          f"{replicated:.2f} with 1 (a local replica)")
    line = f"\ntargets: ratio >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'} ({ratio:.2f})"
    if fixed:
        print(f"\nreceiver at a fixed {args.rate} req/s for {args.rate_duration} s: achieved {fixed['rps']:.0f} req/s, "
              f"p50 {fixed['p50_ms']:.2f} ms, p99 {fixed['p99_ms']:.2f} ms, max {fixed['max_ms']:.2f} ms, "
              f"non-200 {fixed['failed']} (p99 counted from when due: {fixed['p99_due_ms']:.2f} ms)")
        line += f"; p99 <= 10 ms at {args.rate} req/s: {'met' if fixed['p99_ms'] <= 10 else 'NOT met'} ({fixed['p99_ms']:.2f} ms)"
    print(line)


if __name__ == "__main__":
    sys.exit(main())
