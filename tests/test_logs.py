"""What a run logs by default: Prefect's own task-run lines, not our hooks' bookkeeping."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import pytest

from prefect_llmorch.engine.compiler import TASK_RUN_LOGGER, QuietOwnHooks, own_hook
from prefect_llmorch.report import PlanRunFailed
from prefect_llmorch.flows.run import run_plan


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def task_run_lines() -> Iterator[list[str]]:
    """Every message Prefect's task-run logger passes on at INFO and above (tests run with
    PREFECT_LOGGING_LEVEL=WARNING: raised to INFO here, as a user's default is)."""
    logger = logging.getLogger(TASK_RUN_LOGGER)
    handler, level = _Lines(), logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_logs_no_hook_lines_for_plain_cached_and_failed_calls(task_run_lines, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    x = abs(hash(str(tmp_path))) % 10**9  # a fresh cache key per test
    plan = f's1: square({x}, "{log}")\ns2: lookup("q{x}", "{log}")\n'
    run_plan(plan, "toolboxes_cache:toolbox", processors=1, concurrency_limit=None)
    second = run_plan(plan, "toolboxes_cache:toolbox", processors=1, concurrency_limit=None)
    assert all(c.cached for c in second.calls)  # the record_cached hook ran for each call
    with pytest.raises(PlanRunFailed):
        run_plan('s1: fetch(0.01, value="x")\ns2: add(s1, 1)\n', "toolboxes:toolbox", processors=1, concurrency_limit=None)
    assert any("Finished in state" in line for line in task_run_lines)  # INFO lines do get here
    assert not [line for line in task_run_lines if "hook" in line.lower()]


def _record(msg: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(TASK_RUN_LOGGER, level, __file__, 1, msg, None, None)


def test_the_filter_drops_only_our_hooks_info_lines() -> None:
    keep = QuietOwnHooks().filter
    assert not keep(_record("Running hook 'llmorch_record_cached' in response to entering state 'Cached'"))
    assert not keep(_record("Hook 'llmorch_recovery' finished running successfully"))
    assert keep(_record("Running hook 'notify_me' in response to entering state 'Failed'"))  # a user's
    assert keep(_record("Hook 'notify_me' finished running successfully"))
    assert keep(_record("An error was encountered while running hook 'llmorch_recovery'", logging.ERROR))
    assert keep(_record("Finished in state Completed()"))


def test_own_hook_names_the_hook_and_forwards_its_arguments() -> None:
    seen = []
    hook = own_hook(lambda task, run, state: seen.append((task, run, state)), "record_cached")
    hook(1, 2, 3)
    assert hook.__name__ == "llmorch_record_cached" and seen == [(1, 2, 3)]
    assert any(isinstance(f, QuietOwnHooks) for f in logging.getLogger(TASK_RUN_LOGGER).filters)
