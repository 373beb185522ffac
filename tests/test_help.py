"""What `--help` and a missing LLM tell a newcomer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from prefect_llmorch.cli import app
from prefect_llmorch.examples import DEFAULT_TOOLBOX, example_names, example_toolbox, open_plan_path
from prefect_llmorch.functions import load_toolbox
from prefect_llmorch.plan.parser import parse

COMMANDS = [[c.name or c.callback.__name__] for c in app.registered_commands]
COMMANDS += [[g.name, c.name or c.callback.__name__] for g in app.registered_groups for c in g.typer_instance.registered_commands]


def _help(*args: str) -> str:
    out = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "100"})
    assert out.exit_code == 0, out.output
    return out.output


@pytest.mark.parametrize("command", [[]] + COMMANDS, ids=lambda c: " ".join(c) or "llmorch")
def test_help_shows_flags_without_a_type(command: list[str]) -> None:
    text = _help(*command)
    assert "<bool>" not in text and "--help" in text


def test_run_help_lists_every_shipped_example_with_the_toolbox_it_needs() -> None:
    text = " ".join(_help("run").split())  # unwrapped
    for name in example_names():
        assert name in text
        if example_toolbox(name) != DEFAULT_TOOLBOX:
            assert f"{name} (-t {example_toolbox(name)})" in text


@pytest.mark.parametrize("name", example_names())
def test_every_shipped_example_checks_against_the_toolbox_the_help_names(name: str) -> None:
    parse(open_plan_path(name).read_text(), load_toolbox(example_toolbox(name)))


@pytest.mark.parametrize("command", ["plan", "ask"])
def test_without_an_llm_plan_and_ask_point_to_the_demo_and_a_local_model(command: str, tmp_path) -> None:  # noqa: ANN001
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "LLMORCH_MODEL", "PREFECT_API_URL")}
    env["PREFECT_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-m", "prefect_llmorch.cli", command, "How far is the moon?"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: no LLM configured")
    assert "`llmorch demo`" in out.stderr and '"Offline, with a real model"' in out.stderr
