"""The delivery log's two lines, as the Stripe CLI prints them; pure, shared by the sandbox (each
webhook it sends) and `vinr-recon events resend`:

    --> evt_1Q2w3E4r5T6y invoice.paid http://127.0.0.1:8000/webhooks/vinr
    <-- 200 in 4 ms
    <-- 503 in 2 ms, retry in 60 s
    <-- ConnectError after 1 ms, given up after 13 attempts
"""

from __future__ import annotations


def sent(event_id: str, event_type: str, url: str, attempt: int = 1, copy: int = 0) -> str:
    """The `-->` line; a retry or a bad day's duplicate says which it is."""
    notes = ([f"attempt {attempt}"] if attempt > 1 else []) + ([f"duplicate {copy}"] if copy else [])
    return f"--> {event_id} {event_type} {url}" + (f" ({', '.join(notes)})" if notes else "")


def answered(
    status: int | None,
    seconds: float,
    *,
    error: str | None = None,
    retry_in: float | None = None,
    attempts: int | None = None,
    reason: str | None = None,
) -> str:
    """The `<--` line: the status (or why there was none) and the time taken; for a failure, when
    it is tried again (`retry_in`), or that it was given up after `attempts`; `reason` is what the
    receiver said when it refused."""
    took = f"{seconds * 1000:.0f} ms"
    line = f"<-- {status} in {took}" if status is not None else f"<-- {error or 'no answer'} after {took}"
    if reason:
        line += f": {reason}"
    if status is not None and 200 <= status < 300:
        return line
    if retry_in is not None:
        return f"{line}, retry in {duration(retry_in)}"
    if attempts is not None:
        return f"{line}, given up after {attempts} attempts"
    return line


def duration(seconds: float) -> str:
    """`0.006 s`, `30 s`, `32 min`, `17.1 h`: a retry's wait as a person reads it."""
    if seconds < 1:
        return f"{seconds:.3g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
