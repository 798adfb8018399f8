"""The demo's child processes: each in a process group of its own, its output in a log file,
and every one of them stopped (SIGTERM to the group, then SIGKILL) whatever happens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STOP_GRACE = 5.0  # seconds a group gets between SIGTERM and SIGKILL


class DemoFailure(Exception):
    """The demo cannot go on; the message says why, the logs say more."""


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def vinr_recon(*args: str) -> list[str]:
    """The command line of `vinr-recon ARGS` in this interpreter (so a venv need not be on PATH)."""
    return [sys.executable, "-m", "vinr_recon", *args]


class Processes:
    """Starts children with one environment, remembers them, and stops them all."""

    def __init__(self, folder: Path, env: dict[str, str]):
        self.folder = folder
        self.env = env
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str]) -> Child:
        log = self.folder / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                cwd=self.folder, start_new_session=True,  # its own group: Ctrl-C reaches only us
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def run(self, name: str, argv: list[str], timeout: float) -> tuple[int, str]:
        """Run a command to its end; (exit status, its stdout). Its stderr goes to its log."""
        log = self.folder / f"{name}.log"
        with open(log, "ab") as err:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=self.env,
                cwd=self.folder, start_new_session=True,
            )
            child = Child(name, popen, log)
            self.children.append(child)
            try:
                out, _ = popen.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DemoFailure(f"`{' '.join(argv[2:])}` took longer than {timeout:g} s") from None
        return popen.returncode, out.decode(errors="replace")

    def check(self) -> None:
        """Raise if a long-running child has died."""
        for child in self.children:
            if child.popen.returncode is None and child.popen.poll() is not None:
                raise DemoFailure(f"{child.name} exited with status {child.popen.returncode}")

    def stop_all(self) -> None:
        """SIGTERM every group still running, wait up to STOP_GRACE, then SIGKILL what is left."""
        for child in reversed(self.children):
            _signal_group(child.popen, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for child in reversed(self.children):
            try:
                child.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for child in self.children:
            if child.popen.poll() is None:
                _signal_group(child.popen, signal.SIGKILL)
                try:
                    child.popen.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    pass


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)  # start_new_session: the group's id is the child's pid
    except (ProcessLookupError, PermissionError):
        pass
