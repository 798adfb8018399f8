"""Serve an ASGI app (the sandbox, a test's receiver) with uvicorn on a free loopback port.

    async with serve(create_app(config)) as root:       # on this event loop
        base_url = root + "/v1"
    with serve_in_thread(app) as root: ...               # on a loop in a thread of its own

The socket is bound before uvicorn starts, so port 0 works and the URL is known at once. The
app's lifespan runs (so the sandbox delivers webhooks); uvicorn's records go to the standard
`logging` loggers, as configured by the process, never to a config of uvicorn's own.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import uvicorn

START_TIMEOUT = 10.0


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on `host:port` (0: any free port; see `getsockname()`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only then, and without it each request on
    # the stock event loop waits about 40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def root_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def server_for(app: Any, **options: Any) -> uvicorn.Server:
    """A uvicorn server for `app` that leaves logging alone and speaks no WebSocket."""
    settings = {"log_config": None, "ws": "none", "lifespan": "on", "timeout_graceful_shutdown": 2, **options}
    return uvicorn.Server(uvicorn.Config(app, **settings))


@asynccontextmanager
async def serve(app: Any, host: str = "127.0.0.1", port: int = 0, **options: Any) -> AsyncIterator[str]:
    """Serve `app` on the running loop while inside; yields its root URL (`http://host:port`)."""
    sock = bind(host, port)
    server = server_for(app, **options)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if task.done() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start (see its log)")
            await asyncio.sleep(0.005)
        yield root_url(sock)
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, **options: Any) -> Iterator[str]:
    """Serve `app` from a thread with its own event loop while inside; yields its root URL."""
    sock = bind(host, port)
    server = server_for(app, **options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start (see its log)")
            time.sleep(0.005)
        yield root_url(sock)
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT)
        sock.close()
