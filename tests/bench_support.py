"""bench/ scripts loaded as modules (no tests here), for the tests that run a benchmark's harness
at CI size."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench(name: str) -> ModuleType:
    """bench/<name>.py as the module `bench_<name>`, loaded once however many test files ask."""
    module_name = f"bench_{name}"
    if (loaded := sys.modules.get(module_name)) is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(module_name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None, f"no bench/{name}.py"
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def executed(harness):
    """The figures of a chaos run once `harness` has run (their table printed); a run that could
    not go on fails the test, with its processes' logs."""
    chaos = load_bench("chaos")
    try:
        figures = harness.execute()
    except chaos.DemoFailure as exc:
        pytest.fail(f"{exc}\n{chaos.logs(harness)}")
    print(figures.table())
    return figures
