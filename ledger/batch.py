"""Moved into ledger.book, the one writer: these names stay importable from here until their
importers (worker.batching, worker.jobs and tests) import them from there."""

from ledger.book import PoisonInBatch, Received, apply_events

__all__ = ["PoisonInBatch", "Received", "apply_events"]
