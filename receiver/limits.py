"""A byte budget for the request bodies a receiver holds at once (pure logic, no I/O).

Every connection may be a slow client holding a body half sent. Each request may hold its first
`FREE_BYTES` without asking (a VINR event is a few kB, so a real delivery never waits on the
budget, however many slow clients there are); past that, its bytes are drawn from one budget
shared by all requests of the process. A request the budget cannot cover is refused at once
(the endpoint answers 503, so VINR retries), and the memory bodies take is bounded by
`connections x FREE_BYTES + total`, whatever the clients send.
"""

from __future__ import annotations

FREE_BYTES = 64 * 1024


class BodyBudget:
    """`total` bytes shared by the request bodies in flight, past each one's `free` bytes.

    One per process (per app), used from the event loop's thread only: no lock.
    """

    __slots__ = ("total", "free", "used")

    def __init__(self, total: int, free: int = FREE_BYTES) -> None:
        self.total = total
        self.free = free
        self.used = 0

    def request(self) -> Held:
        """What one request holds; `release()` it once the body is no longer needed."""
        return Held(self)


class Held:
    """The body bytes one request holds, and the part of them drawn from its budget."""

    __slots__ = ("budget", "size", "drawn")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0
        self.drawn = 0

    def take(self, more: int) -> bool:
        """Hold `more` bytes besides: True, or False (nothing taken) when the budget cannot cover them."""
        budget = self.budget
        drawn = self.size + more - budget.free
        need = drawn - self.drawn if drawn > 0 else 0
        if need and budget.used + need > budget.total:
            return False
        budget.used += need
        self.drawn += need
        self.size += more
        return True

    def release(self) -> None:
        """Give back what was drawn; holding nothing afterwards. Idempotent."""
        self.budget.used -= self.drawn
        self.drawn = 0
        self.size = 0
