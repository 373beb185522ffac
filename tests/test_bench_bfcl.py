"""benchmarks/bfcl.py's conversions: BFCL function docs to a Toolbox, and a plan back to
BFCL's call form, scored by BFCL's checker when `bfcl-eval` is installed."""

from __future__ import annotations

import importlib.util
from typing import Literal

import pytest

from prefect_llmorch.plan.errors import ArgumentError
from prefect_llmorch.plan.parser import parse

import bfcl  # benchmarks/ is on sys.path (conftest)
from llm_fixtures import fake_llm, llm  # noqa: F401 - fixtures
from prefect_llmorch.testing import FakeError

SPOTIFY = {"name": "spotify.play", "description": "Play specific tracks from a given artist for a specific time duration.",
           "parameters": {"type": "dict", "properties": {
               "artist": {"type": "string", "description": "The artist whose songs you want to play."},
               "duration": {"type": "integer", "description": "The duration, in minutes."},
               "quality": {"type": "string", "enum": ["low", "high"], "description": "Stream quality."}},
               "required": ["artist", "duration"]}}
TRUTH = [{"spotify.play": {"artist": ["Taylor Swift"], "duration": [20], "quality": ["", "high"]}},
         {"spotify.play": {"artist": ["Maroon 5"], "duration": [15], "quality": [""]}}]


def test_a_bfcl_function_becomes_a_typed_spec_with_its_parameters_described() -> None:
    toolbox, names = bfcl.toolbox_of([SPOTIFY])
    spec = toolbox["spotify_play"]
    assert names == {"spotify_play": "spotify.play"}
    params = spec.signature.parameters
    assert list(params) == ["artist", "duration", "quality"]
    assert params["duration"].annotation is int and params["quality"].annotation == Literal["low", "high"]
    assert params["quality"].default is None and "The duration, in minutes." in spec.description
    with pytest.raises(ArgumentError, match="duration"):
        parse('s1: spotify_play("Taylor Swift", "twenty")', toolbox)


def test_a_plan_becomes_bfcl_calls_without_its_self_call() -> None:
    toolbox, names = bfcl.toolbox_of([SPOTIFY])
    plan = parse('s1: spotify_play("Taylor Swift", 20, quality="high")\ns2: spotify_play(artist="Maroon 5", duration=15)\n'
                 's3: self("Done: {s1} {s2}")', toolbox)
    calls = bfcl.calls_of_plan(plan, toolbox, names)
    assert calls == [{"spotify.play": {"artist": "Taylor Swift", "duration": 20, "quality": "high"}},
                     {"spotify.play": {"artist": "Maroon 5", "duration": 15}}]
    if importlib.util.find_spec("bfcl_eval") is None:
        pytest.skip("bfcl-eval is not installed (pip install --no-deps bfcl-eval==2026.3.23): the checker is not run")
    from bfcl_eval.constants.enums import Language

    check = bfcl._checker()
    assert check([SPOTIFY], calls, TRUTH, Language.PYTHON, "parallel", bfcl.MODEL_NAME)["valid"]
    wrong = [calls[0], {"spotify.play": {"artist": "Maroon 5", "duration": 16}}]
    assert not check([SPOTIFY], wrong, TRUTH, Language.PYTHON, "parallel", bfcl.MODEL_NAME)["valid"]


def test_an_endpoint_error_is_a_failed_question_not_the_end_of_the_run(fake_llm, llm) -> None:  # noqa: F811
    # llama.cpp's answer to a repair prompt quoting an answer that had filled the context
    fake_llm.add(FakeError(status=400, message="request (6724 tokens) exceeds the available context size "
                                               "(4096 tokens), try increasing it", type="invalid_request_error"))
    calls, info = bfcl.ours(llm, "Play Taylor Swift for 20 minutes", [SPOTIFY], "json")
    assert calls == [] and info["valid"] is False and info["first_valid"] is False
    assert info["error"].startswith("LLMError") and "context size" in info["error"]
