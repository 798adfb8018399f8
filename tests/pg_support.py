"""PostgreSQL on this machine (no tests here): a scratch database on a running cluster (for the
test session, and for bench/, which puts tests/ on its path); and as deployed at scale, a private
PgBouncer in front of a PostgreSQL, and a private PostgreSQL instance a test may stop and start
without touching the machine's cluster (which other tests share).

Both run as the `postgres` user (neither runs as root), from the machine's Debian packages
(`.ci/services` installs pgbouncer), on free loopback ports, in a test's temporary folder.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from port_support import free_port, wait_listening

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVICE_USER = "postgres"


# --- a scratch database on a running cluster (the machine's, or one of a benchmark's) -----------


def in_thread(fn, *args):
    """Run `fn` (which may call asyncio.run, as Alembic's env does) off the caller's event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def database_url(admin_url: str, name: str) -> str:
    """The URL of database `name` on the cluster that `admin_url` reaches."""
    return f"{admin_url.rsplit('/', 1)[0]}/{name}"


async def admin_execute(admin_url: str, sql: str) -> None:
    """One statement on an admin connection (CREATE DATABASE and DROP DATABASE run outside a transaction)."""
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def create_database(admin_url: str, name: str) -> str:
    """A new, empty database `name`; its URL."""
    await admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    return database_url(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    """Database `name` gone, whoever was still connected to it."""
    await admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_database(admin_url: str, name: str) -> Iterator[str]:
    """A new, empty database `name` for the length of the block; its URL. Usable with or without
    a running event loop (the statements run on a loop of their own, in a thread)."""
    url = in_thread(asyncio.run, create_database(admin_url, name))
    try:
        yield url
    finally:
        in_thread(asyncio.run, drop_database(admin_url, name))


# --- PgBouncer and a private PostgreSQL -----------------------------------------------------------


def have_pgbouncer() -> bool:
    return shutil.which("pgbouncer") is not None or Path("/usr/sbin/pgbouncer").exists()


def _as_service_user(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        command = ["runuser", "-u", SERVICE_USER, "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, **kwargs)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def owned_by_service_user(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVICE_USER)
        os.chown(path, user.pw_uid, user.pw_gid)


@contextmanager
def pgbouncer(folder: Path, upstream_port: int, *, pool_size: int = 2):
    """A PgBouncer in transaction pooling mode on a free port, in front of the PostgreSQL on
    `upstream_port` (every database, trusted users); yields its port. `pool_size` server
    connections per database and user, so that client connections share them."""
    folder.mkdir(parents=True, exist_ok=True)
    owned_by_service_user(folder)
    port = free_port()
    (folder / "users.txt").write_text('"postgres" ""\n"root" ""\n')
    ini = folder / "pgbouncer.ini"
    ini.write_text(f"""[databases]
* = host=127.0.0.1 port={upstream_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / 'users.txt'}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
logfile = {folder / 'pgbouncer.log'}
pidfile = {folder / 'pgbouncer.pid'}
; a client waits this long for a server connection before it is told no
query_wait_timeout = 5
server_connect_timeout = 2
server_login_retry = 1
""")
    _as_service_user(["pgbouncer", "-d", str(ini)])
    try:
        wait_listening("127.0.0.1", port, timeout=15)
        yield port
    finally:
        pid = int((folder / "pgbouncer.pid").read_text())
        os.kill(pid, 15)
        deadline = time.monotonic() + 10
        while (folder / "pgbouncer.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


class PrivatePostgres:
    """A PostgreSQL cluster of a test's own (initdb into `folder`), on a free port, which the
    test may stop and start at will."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        owned_by_service_user(folder)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        _as_service_user([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                          "--no-sync", "-E", "UTF8", "--locale=C"])

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
        _as_service_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                          str(self.folder / "postgres.log"), "-w", "-t", "30", "start"])

    def stop(self) -> None:
        """A fast shutdown: every session is cut, as when the server restarts."""
        _as_service_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"])

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@contextmanager
def private_postgres(folder: Path):
    """A started PrivatePostgres, stopped at the end whatever happened."""
    server = PrivatePostgres(folder)
    server.init()
    server.start()
    try:
        yield server
    finally:
        if server.running():
            server.stop()
