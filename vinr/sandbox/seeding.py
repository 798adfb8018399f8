"""Bulk data for benchmarks: many invoices in every state, made directly in memory.

The invoices go through the same lifecycle rules as the API's (so every amount is consistent),
with their `created` times spread over the last days and, if asked, their events recorded
(and delivered, when the sandbox has endpoints).
"""

from __future__ import annotations

import gc
import random
from collections import Counter
from dataclasses import dataclass, field

from vinr.sandbox.errors import CardError
from vinr.sandbox.state import CARD_DECLINED, CARD_SUCCEEDS, DAY, Invoice, State

# The share of each kind of invoice; the name says which lifecycle it walked.
DEFAULT_MIX: dict[str, float] = {
    "paid": 0.40,
    "open": 0.20,
    "partially_paid": 0.07,
    "declined": 0.05,
    "uncollectible": 0.06,
    "paid_late": 0.04,
    "void": 0.08,
    "draft": 0.05,
    "credit": 0.05,
}

_DESCRIPTIONS = ("Implementation", "Support hours", "Licence", "Onboarding setup fee", "Hosting")


@dataclass
class SeedReport:
    customers: list[str]
    invoices: list[str]
    by_kind: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)


class _SteppedClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def seed_invoices(
    state: State,
    count: int,
    *,
    customers: int = 1_000,
    seed: int = 0,
    emit_events: bool = False,
    span_days: float = 20.0,
    currency: str = "EUR",
    mix: dict[str, float] | None = None,
) -> SeedReport:
    """Create `customers` customers and `count` invoices whose kinds follow `mix`.

    `created` times rise evenly over the `span_days` up to now (inside the Events API's 30 days);
    the same `seed` makes the same invoices. Without `emit_events` no event is recorded at all.
    Not thread-safe: call it before serving, or on the loop that serves the sandbox.
    """
    if count < 0 or customers < 1:
        raise ValueError("count must be >= 0 and customers >= 1")
    rng = random.Random(seed)
    kinds, weights = zip(*(mix or DEFAULT_MIX).items())
    chosen = rng.choices(kinds, weights, k=count)
    end = state.clock()
    start = end - span_days * DAY
    clock = _SteppedClock(start)
    saved = state.clock, state.quiet
    state.clock, state.quiet = clock, not emit_events
    # Nothing made here is garbage; collecting a heap growing by the 100,000s costs a third.
    collecting = gc.isenabled()
    gc.disable()
    try:
        report = SeedReport(
            [
                state.create_customer(f"billing+{n}@example.test", f"Customer {n}", {"accountId": f"acct_{n}"}).id
                for n in range(customers)
            ],
            [],
        )
        step = (end - start) / max(count, 1)
        for n, kind in enumerate(chosen):
            clock.now = start + n * step
            inv = _one(state, rng, kind, report.customers[n % customers], currency, n)
            report.invoices.append(inv.id)
            report.by_kind[kind] += 1
            report.by_status[inv.status] += 1
    finally:
        state.clock, state.quiet = saved
        if collecting:
            gc.enable()
    return report


def _below(rng: random.Random, n: int) -> int:
    # random() is several times cheaper than randrange(), which matters at 100,000s.
    return int(rng.random() * n)


def _one(state: State, rng: random.Random, kind: str, customer: str, currency: str, n: int) -> Invoice:
    inv = state.create_invoice(customer, currency, "send_invoice", 14, {"projectId": f"proj_{n}"})
    for _ in range(1 + _below(rng, 3)):
        unit_amount = 100 * (5 + _below(rng, 1995))
        state.add_line(inv.id, unit_amount, 1 + _below(rng, 8), _DESCRIPTIONS[_below(rng, len(_DESCRIPTIONS))])
    if kind == "credit":
        # Proration credit larger than the charges: a negative total, paid at once, credited.
        state.add_line(inv.id, -(inv.total + 100 * (1 + _below(rng, 99))), 1, "Credit for unused time")
    if kind == "draft":
        return inv
    state.finalize(inv.id)
    if inv.status == "paid":
        return inv  # a credit note, or covered wholly by the customer's credit: nothing left to do
    if kind == "paid":
        state.pay(inv.id, CARD_SUCCEEDS)
    elif kind == "partially_paid":
        state.pay(inv.id, CARD_SUCCEEDS, amount=max(1, inv.amount_due // rng.randint(2, 5)))
    elif kind == "declined":
        try:
            state.pay(inv.id, CARD_DECLINED)
        except CardError:
            pass  # the point: it stays open with the failure recorded
    elif kind == "uncollectible":
        state.mark_uncollectible(inv.id)
    elif kind == "paid_late":
        state.mark_uncollectible(inv.id)
        state.pay(inv.id, CARD_SUCCEEDS)
    elif kind == "void":
        state.void(inv.id)
    return inv
