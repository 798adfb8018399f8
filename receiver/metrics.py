"""The receiver's Prometheus metrics, in a registry of its own.

Each app gets its own `CollectorRegistry` (never the process-global one), so several apps in
one process, as in the tests, do not clash over metric names. It also carries the process and
Python collectors and the reconciliation's figures (ledger.metrics: the worker serves them too).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ledger.metrics import ReconciliationGauges, add_runtime_collectors
from vinr.events import INVOICE_EVENT_TYPES

# Event types come from the payload: anything outside the known set is one label value, so a
# stream of novel types cannot grow the number of series without bound.
OTHER_TYPE = "other"
UNKNOWN_TYPE = "unknown"  # the body was never parsed into an event (too large, bad signature...)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def type_label(event_type: str) -> str:
    return event_type if event_type in INVOICE_EVENT_TYPES else OTHER_TYPE


class Metrics:
    """Deliveries, verification failures, enqueue latency, queue depth, dead letters, dashboard
    sign-ins and the reconciliation's figures for one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "vinr_webhook_deliveries",
            "Webhook deliveries by event type and outcome.",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.verification_failures = Counter(
            "vinr_webhook_verification_failures",
            "Deliveries whose signature did not verify, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.enqueue_seconds = Histogram(
            "vinr_webhook_enqueue_seconds",
            "Time from handing an event to the queue to Redis acknowledging it (or failing).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "vinr_queue_depth",
            "Jobs waiting in the arq queue, read (ZCARD) at scrape time; NaN when Redis did not answer.",
            registry=self.registry,
        )
        self.dead = Gauge(
            "vinr_dead",
            "What waits for a person, read from the ledger at scrape time: dead-lettered events not yet "
            "replayed (kind=events) and alerts or callbacks that never got through (kind=notices).",
            ["kind"],
            registry=self.registry,
        )
        self.signins = Counter(
            "vinr_dashboard_signins",
            "Dashboard sign-in attempts by outcome: ok, failed (a wrong token) or braked (too many "
            "attempts from one client address; refused unchecked).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("ok", "failed", "braked"):
            self.signins.labels(outcome)
        self.reconciliation = ReconciliationGauges(self.registry)  # read at scrape time (receiver.health)
        add_runtime_collectors(self.registry)

        self._delivered: dict[tuple[str, str], Callable[[], None]] = {}

    def delivered(self, type_label: str, outcome: str) -> None:
        """Count one delivery (type_label: an invoice event type, OTHER_TYPE or UNKNOWN_TYPE)."""
        inc = self._delivered.get((type_label, outcome))
        if inc is None:  # labels() takes a lock and builds a key; once per pair is enough
            inc = self._delivered[type_label, outcome] = self.deliveries.labels(type_label, outcome).inc
        inc()

    def render(self) -> bytes:
        """The text exposition of every metric of this app."""
        return generate_latest(self.registry)
