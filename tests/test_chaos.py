"""The chaos run at CI size (bench/chaos.py, whose harness this runs): 200 invoices through full
lifecycles on a bad VINR day, the receiver and two workers as real processes on a private Redis
with AOF and a private PostgreSQL database; one worker SIGKILLed and restarted and Redis
restarted while events flow; then a reconciliation. Same pass condition as the full run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _load_chaos():
    path = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"
    spec = importlib.util.spec_from_file_location("bench_chaos", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


chaos = _load_chaos()


def test_chaos_run_ci_size(tmp_path):
    cfg = chaos.ChaosConfig(invoices=200, workers=2, seed=9, worker_kills=1, redis_restarts=1, job_timeout=10.0,
                            settle_timeout=120.0)
    harness = chaos.Chaos(cfg, tmp_path)
    try:
        figures = harness.execute()
    except chaos.DemoFailure as exc:
        pytest.fail(f"{exc}\n{chaos.logs(harness)}")
    print(figures.table())
    assert figures.passed, f"{figures.table()}\n{chaos.logs(harness)}"
    assert len(figures.chaos) == 2 and figures.trial_balance
    assert figures.acknowledged and figures.backfilled and figures.notices["callbacks"]["expected"]


def test_only_an_identical_copy_after_a_crash_counts_as_a_redelivery():
    """The harness's own judge: a second arrival is forgiven only when it is the same copy and
    one of the run's crashes fell between the two, shortly after the first."""
    A = chaos.Arrival
    crash_at = [100.0]
    expected = {("inv_1", 1), ("inv_2", 1), ("inv_3", 1), ("inv_4", 1)}
    arrivals = [A(("inv_1", 1), 99.9, "<a@x>"), A(("inv_1", 1), 130.0, "<a@x>"),  # killed mid-send
                A(("inv_2", 1), 50.0, "<b@x>"), A(("inv_2", 1), 130.0, "<b@x>"),  # no crash near the first
                A(("inv_3", 1), 99.0, "<c@x>"), A(("inv_3", 1), 130.0, "<other@x>"),  # not the same copy
                A(("inv_4", 1), 99.5, "<d@x>")]
    result = chaos.tally(arrivals, expected, crash_at, "")
    assert result["redelivered"] == ["('inv_1', 1)"]
    assert result["duplicates"] == ["('inv_2', 1)", "('inv_3', 1)"]
    assert result["missing"] == [] and result["unexpected"] == [] and result["received"] == 7
