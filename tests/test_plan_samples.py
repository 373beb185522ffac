"""Every sample plan: the LLMCompiler prompt examples (shared data) and the paper's plans
(tests/plans), with exact calls, dependency sets and error positions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from prefect_llmorch.plan.errors import PlanError, PlanErrors, PlanReferenceError
from prefect_llmorch.plan.model import Arg, ListExpr, Literal, Ref, Template
from prefect_llmorch.plan.parser import PlanStream, parse
from prefect_llmorch.plan.render import render

SHARED = SHARED_DATA / "llmcompiler_plans"
LOCAL = Path(__file__).parent / "plans"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"needs the shared plan data at {SHARED} (absent in a plain clone)")


def plan_text(path: Path) -> str:
    """The file with its `Question:`/options header blanked (line numbers are kept)."""
    lines = path.read_text().split("\n")
    first = next(i for i, ln in enumerate(lines) if re.match(r"(Thought:|\d+\.)", ln))
    return "\n" * first + "\n".join(lines[first:])


S = "search"
M = "math"
# file -> [(id, function, deps)] from INDEX.md (join excluded: it is a marker).
GOOD = {
    "hotpotqa_1.txt": [("1", S, ""), ("2", S, "")],
    "hotpotqa_2.txt": [("1", S, ""), ("2", S, "")],
    "hotpotqa_llama_1.txt": [("1", S, ""), ("2", S, "")],
    "hotpotqa_llama_2.txt": [("1", S, ""), ("2", S, "")],
    "hotpotqa_llama_3.txt": [("1", S, ""), ("2", S, "")],
    "movie_llama_commented_1.txt": [(str(i), S, "") for i in range(1, 9)],
    "parallelqa_2.txt": [("1", S, ""), ("2", M, "1"), ("3", S, ""), ("4", M, "3"), ("5", M, "34")],
    "parallelqa_3.txt": [("1", S, ""), ("2", M, "1"), ("3", S, ""), ("4", M, "3")],
    "parallelqa_4.txt": [("1", S, ""), ("2", S, ""), ("3", M, "12"), ("4", S, ""), ("5", S, ""),
                         ("6", M, "45"), ("7", M, "36")],
    "parallelqa_5.txt": [("1", S, ""), ("2", S, ""), ("3", M, "12")],
}


@needs_shared
def test_every_shared_sample_is_covered() -> None:
    names = {p.name for p in SHARED.glob("*.txt")}
    assert names == set(GOOD) | {"parallelqa_1.txt", "movie_1.txt", "movie_llama_1.txt"}


@needs_shared
@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_llmcompiler_sample_parses_to_its_calls_and_deps(name: str) -> None:
    plan = parse(plan_text(SHARED / name))
    assert plan.dialect == "llmcompiler"
    assert [(c.id, c.function, "".join(sorted(c.deps))) for c in plan] == GOOD[name]


@needs_shared
@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_sample_streams_and_round_trips(name: str) -> None:
    text = plan_text(SHARED / name)
    stream = PlanStream()
    fed = [c for ch in text for c in stream.feed(ch)]
    plan = stream.close()
    assert fed == list(plan.calls)
    assert parse(render(plan, "llmcompiler")) == plan
    assert parse(render(plan, "paper")) == plan


@needs_shared
def test_parallelqa_2_call_5_uses_3_and_4_as_written() -> None:
    plan = parse(plan_text(SHARED / "parallelqa_2.txt"))
    assert plan["5"].args == (Arg(None, Template(("abs(", Ref("3"), " - ", Ref("4"), ")"))),)
    assert plan["2"].args == (Arg(None, Literal("half of Mount Everest height in meter?")),
                              Arg(None, ListExpr((Ref("1"),))))


@needs_shared
def test_parallelqa_1_reports_each_missing_paren_at_its_line_end() -> None:
    text = plan_text(SHARED / "parallelqa_1.txt")
    with pytest.raises(PlanErrors) as info:
        parse(text)
    lines = text.split("\n")
    got = [(e.kind, e.line, e.column) for e in info.value.errors]
    assert got == [("syntax", n, len(lines[n - 1]) + 1) for n in (3, 5, 7)]
    assert [e.column for e in info.value.errors] == [65, 67, 64]
    for err in info.value.errors:
        assert "`)`" in err.expected and "not finished" in err.message


@needs_shared
@pytest.mark.parametrize("name, first_line", [("movie_1.txt", 13), ("movie_llama_1.txt", 11)])
def test_movie_unquoted_arguments_are_reported_each(name: str, first_line: int) -> None:
    with pytest.raises(PlanErrors) as info:
        parse(plan_text(SHARED / name))
    n = first_line
    got = [(e.kind, e.line, e.column) for e in info.value.errors]
    assert got == [("syntax", n, 18), ("syntax", n + 1, 18), ("syntax", n + 2, 14),
                   ("reference", n + 3, 11)]
    assert "unexpected `Powers`" in info.value.errors[0].message
    assert "must be quoted" in info.value.errors[0].message
    assert info.value.errors[3].message == ("undefined reference `Rosetta`; defined so far: 1, 2, 3, 4; "
                                            'if it is text, write it in double quotes: "Rosetta"')


# --------------------------------------------------------------------------- paper plans

PAPER = {
    "paper_fig2.txt": [("s1", "search", ""), ("s2", "search", ""), ("s3", "python", "s1 s2"),
                       ("s4", "chatbot", "s3")],
    "paper_fig6.txt": [("s1", "search", ""), ("s2", "search", ""), ("s3", "chatbot", "s1 s2")],
    "paper_fig7.txt": [("s0", "get_temperature", ""), ("s1", "get_temperature", ""),
                       ("s2", "python", "s0 s1"), ("s3", "chatbot", "s0 s1 s2"), ("s4", "python", "s0")],
    "paper_kitti_fig3.txt": [(f"s{i}", "detect", "") for i in range(1, 9)] + [
        ("s9", "chatbot", "s1 s2 s3 s4"), ("s10", "chatbot", "s5 s6 s7 s8"),
        ("s11", "chatbot", "s10 s9")],
    "llmcompiler_design_fig5.txt": [("1", "search", ""), ("2", "search", ""), ("3", "math", "1 2")],
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_plan_parses_to_its_calls_and_deps(name: str) -> None:
    plan = parse((LOCAL / name).read_text())
    assert [(c.id, c.function, " ".join(sorted(c.deps))) for c in plan] == PAPER[name]
    assert parse(render(plan, plan.dialect)) == plan


def test_fig6_multi_line_prompt_keeps_newlines_and_json_braces() -> None:
    plan = parse((LOCAL / "paper_fig6.txt").read_text())
    (arg,) = plan["s3"].args
    assert arg.value == Template((
        "You are a technical analyst.\nCompare the two release notes below.\n\nPrefect: ",
        Ref("s1"), "\nAirflow: ", Ref("s2"),
        '\n\nReply as JSON: {"winner": "...", "reason": "..."}',
    ))
    assert (plan["s3"].line, plan["s3"].column) == (5, 1)


def test_fig7_triple_quoted_prompt_and_arithmetic() -> None:
    plan = parse((LOCAL / "paper_fig7.txt").read_text())
    assert plan["s3"].keywords == {"temperature": Literal(0.2)}
    assert plan["s4"].line == 10


def test_kitti_plan_has_eight_independent_calls_then_two_levels() -> None:
    plan = parse((LOCAL / "paper_kitti_fig3.txt").read_text())
    assert len(plan) == 11
    assert [c.id for c in plan if not c.deps] == [f"s{i}" for i in range(1, 9)]


def test_sl_typo_is_reported_not_guessed() -> None:
    with pytest.raises(PlanReferenceError) as info:
        parse((LOCAL / "paper_typo_sl.txt").read_text())
    assert str(info.value) == "line 3, column 32: undefined reference `sl`; defined so far: s1, s2"
    assert info.value.errors == [info.value]


def test_errors_are_plan_errors_with_fields_for_the_repair_prompt() -> None:
    try:
        parse((LOCAL / "paper_typo_sl.txt").read_text())
    except PlanError as err:
        assert err.to_dict()["kind"] == "reference"
        assert "s3: python(\"cmp.py\", args=[s1, sl])" in err.report()
