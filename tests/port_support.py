"""Ports on this machine (no tests here): a free one, whether something listens on one, and
waiting until something does. For the tests and for bench/ (which puts tests/ on its path).

`free_port` is the demo's own (`vinr_recon.demo.services`), so there is one definition of it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from vinr_recon.demo.services import free_port

__all__ = ["free_port", "listening", "wait_listening"]


def listening(host: str, port: int, timeout: float = 0.3) -> bool:
    """Whether something accepts a connection on host:port now."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def wait_listening(host: str, port: int, timeout: float = 20.0, check: Callable[[], object] | None = None) -> None:
    """Until something accepts connections on host:port (`check()` is called meanwhile and may raise)."""
    deadline = time.monotonic() + timeout
    while not listening(host, port):
        if check:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} within {timeout:g} s")
        time.sleep(0.05)
