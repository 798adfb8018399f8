"""Issue 22 at CI size: the chaos run across hosts (bench/chaos.py --hosts, whose harness this
runs), and the test hosts it stands on (tests/hosts.py). Needs root and `ip netns`, as CI has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import hosts
from bench_support import executed, load_bench
from pg_support import have_pgbouncer
from port_support import wait_listening

pytestmark = [
    pytest.mark.skipif(hosts.unavailable() is not None, reason=str(hosts.unavailable())),
]

CONNECT = ("import socket, sys\n"
           "try:\n"
           "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close(); print('connected')\n"
           "except OSError as exc:\n"
           "    print(type(exc).__name__)\n")


def connects(source: hosts.Host, target: hosts.Host, port: int) -> bool:
    done = subprocess.run(source.command([sys.executable, "-c", CONNECT, target.ip, str(port)]),
                          capture_output=True, text=True, timeout=10)
    return done.stdout.strip() == "connected"


def names_of_slot(prefix: str) -> list[str]:
    namespaces = [line.split()[0] for line in hosts.ip("netns", "list").stdout.splitlines() if line.strip()]
    links = hosts.ip("-o", "link", "show").stdout
    return [n for n in namespaces if n.startswith(prefix + "-")] + [
        name for name in (line.split(": ")[1].split("@")[0] for line in links.splitlines())
        if name.startswith(prefix) and name[len(prefix):] and not name[len(prefix)].isdigit()]


def test_hosts_talk_over_the_bridge_and_a_partition_cuts_them_until_healed():
    with hosts.Network() as net:
        server, client = net.add("server"), net.add("client")
        assert server.ip != client.ip and server.ip.startswith(net.subnet + ".")
        listener = server.run([sys.executable, "-m", "http.server", "--bind", server.ip, "8000"])
        try:
            wait_listening(server.ip, 8000)  # from the root namespace, through the bridge
            assert connects(client, server, 8000)
            # Only from this peer (a blackhole route in the client's namespace) ...
            client.partition(peers=[server])
            assert not connects(client, server, 8000)
            client.heal()
            assert connects(client, server, 8000)
            # ... or from everyone (its link down).
            server.partition()
            assert not connects(client, server, 8000)
            server.heal()
            assert connects(client, server, 8000)
        finally:
            listener.kill()
            listener.wait(5)
        prefix = net.prefix
    assert names_of_slot(prefix) == []


def test_everything_a_run_made_is_deleted_when_it_fails_and_when_it_dies():
    """Leaving with an exception deletes the namespaces (with what runs in them), the veths and the
    bridge; a run SIGKILLed inside leaves them, and the next run to take its slot deletes them."""
    with pytest.raises(RuntimeError, match="boom"):
        with hosts.Network() as net:
            host = net.add("a")
            sleeper = host.run(["sleep", "60"])
            prefix = net.prefix
            raise RuntimeError("boom")
    assert names_of_slot(prefix) == [] and sleeper.wait(5) is not None

    dying = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); import hosts\n"
        "net = hosts.Network().__enter__(); net.add('a'); net.add('b')\n"
        "print(net.prefix, flush=True); time.sleep(60)"), str(Path(__file__).parent)],
        stdout=subprocess.PIPE, text=True)
    try:
        dead_prefix = dying.stdout.readline().strip()
        assert dead_prefix and len(names_of_slot(dead_prefix)) == 5  # 2 namespaces, 2 veths, the bridge
    finally:
        dying.kill()
        dying.wait(5)
        dying.stdout.close()
    assert names_of_slot(dead_prefix)  # a dead run cleans nothing
    with hosts.Network() as net:
        assert net.prefix == dead_prefix  # its slot is free again, so the next run takes it ...
        assert names_of_slot(dead_prefix) == [f"{dead_prefix}br"]  # ... and found only its own bridge
    assert names_of_slot(dead_prefix) == []


def test_two_runs_at_once_take_two_slots():
    with hosts.Network() as one, hosts.Network() as two:
        assert one.subnet != two.subnet and one.prefix != two.prefix
        a, b = one.add("a"), two.add("a")
        assert a.ip != b.ip and a.ns != b.ns


@pytest.mark.slow
@pytest.mark.skipif(not have_pgbouncer(), reason="pgbouncer is not installed (.ci/services installs it)")
@pytest.mark.parametrize("redis_fault", ["kill", "isolate"])
def test_chaos_run_across_hosts_ci_size(tmp_path, redis_fault):
    """Two receivers (VINR's deliveries alternate between them), two workers, a Redis primary, its
    replica and three Sentinels, PgBouncer and PostgreSQL, VINR's sandbox: each on a host of its
    own. While 150 invoices go through their lifecycles: the Redis primary SIGKILLed, or cut off
    from its replica and the Sentinels but not from the service (split brain: it takes writes the
    promoted replica never sees) until 3 s after Sentinel promoted the replica; a worker host cut
    off from the database for 10 s, PostgreSQL restarted, a worker SIGKILLed. With
    REDIS_MIN_REPLICAS=1, before reconciliation every acknowledged event was applied from its
    webhook and nothing was posted twice; after it, every invoice equals VINR, the trial balance
    is zero, every alert and callback arrived once."""
    chaos = load_bench("chaos")
    cfg = chaos.ChaosConfig(invoices=150, workers=2, seed=9, job_timeout=10.0, settle_timeout=120.0,
                            hosts=True, min_replicas=1, partition_seconds=10.0, redis_fault=redis_fault)
    harness = chaos.HostsChaos(cfg, tmp_path)
    figures = executed(harness)
    assert figures.passed, f"{figures.table()}\n{chaos.logs(harness)}"
    assert len(figures.chaos) == 4 and len(set(figures.hosts.values())) == len(figures.hosts) >= 14
    assert any("Sentinel promoted" in act for act in figures.chaos)
    before = figures.before_reconcile
    assert before["acknowledged_lost"] == 0 and not before["failures"]
    assert figures.acknowledged and figures.backfilled and figures.trial_balance
    assert figures.notices["callbacks"]["expected"] and figures.refused.get("503")  # the failover was felt
    assert not hosts.cleanup(f"vr{harness.net.k}")  # nothing of the run's network is left
