"""A busy machine (issue 27): CPU hogs beside several `llmorch` commands at once, each with
its own embedded server on one PREFECT_HOME's SQLite file, asks whose repair comes seconds
later (as from a slow model). None may crash or fail because the API was busy: before the
untagged task runs and the guard's patience, asks ended with
`ConcurrencySlotAcquisitionError: ... 503`. The scene is `benchmarks/busy.py`'s, smaller."""

from __future__ import annotations

from pathlib import Path

import pytest

from busy import scene
from homes import migrated_home

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_asks_with_slow_repairs_and_runs_beside_cpu_hogs_all_complete(tmp_path: Path) -> None:
    outcomes = scene(ROOT, asks=2, runs=1, hogs=2, delay=2.0, home=str(migrated_home(tmp_path / "home")))
    assert dict(outcomes) == {"Completed": 3}, dict(outcomes)
