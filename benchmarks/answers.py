"""`python benchmarks/answers.py` -- final answers, not calls: does the answer keep the facts?

BFCL and NESTFUL (`bfcl.py`, `nestful.py`) score the calls a plan makes. This scores what a
user reads: each question is asked end to end the way a user asks it (`ask_query`, the
library behind `llmorch ask`: plan, repairs, the calls, the `self` calls) against a real
model, over `answers_toolbox.py` (typed lookups of populations, distances, prices and stock,
and `add`, `subtract`, `largest`). Every question's right answer needs arithmetic or a
comparison of results ("How many people live in Oslo and Bergen together?"), and is
computed here from the toolbox's own functions, never written down by hand.

Scored per question:

- plan valid: the first answer, and the final one (after repairs);
- facts: the final answer states every expected fact: a number (as written, `1,009,650` or
  `1009650`; equal within the rounding of its own decimals, sign aside) and a name (a choice:
  the right name is in the answer and, when a wrong one of the question's choices is too, the
  right one comes first; read the answers in `--out` where that rule is too coarse);
- unsupported numbers: numbers in the answer found neither in the results of the run's calls
  (the `self` calls' texts aside), nor in the question, nor among the expected facts
  (`selfcall.unsupported_numbers`, the check `self` itself makes);
- LLM calls (requests that reached the model, through a counting proxy, so `self` re-asks
  count), tokens (planner, repairs, `self` calls: the run's own count), seconds (the whole
  `ask_query`, Prefect included).

The model: `--base-url` of an OpenAI-compatible server, or by default the project's own
local model (`prefect_llmorch.llm.local`) on a free port. `--planner text json` (both by
default). Results of cached functions are not reused (`cache=False`): every run computes.

Options: --questions I [I ...] (indexes into QUESTIONS), --planner, --base-url, --threads,
--out FILE (JSON with every answer, written after each), --summary FILE [FILE ...] (print the
tables of earlier runs).
"""

from __future__ import annotations

if __name__ == "__main__":  # a run: paths and Prefect settings (the tests import this module for its scoring)
    import _setup  # noqa: F401

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Union  # noqa: E402

import answers_toolbox as tb  # noqa: E402
from _proxy import Recorder, model_client, proxy  # noqa: E402

from prefect_llmorch.llm.selfcall import _numbers, unsupported_numbers  # noqa: E402

TOOLBOX = "answers_toolbox:toolbox"


@dataclass(frozen=True)
class Number:
    """A number the answer must state (within the rounding of the decimals it is written with)."""

    value: float


@dataclass(frozen=True)
class Name:
    """A name the answer must give; `others` are the question's wrong choices."""

    name: str
    others: tuple[str, ...] = ()


Fact = Union[Number, Name]


@dataclass(frozen=True)
class Question:
    text: str
    #: the expected facts, computed from the toolbox's functions when scored
    facts: Callable[[], list[Fact]] = field(compare=False)


def _pop(name: str) -> int:
    return tb.city(name).population


def _price(product: str, store: str) -> float:
    return tb.price(product, store).price_eur


def _farther(a: str, b: str) -> list[Fact]:
    ka, kb = tb.distance("Paris", a).km, tb.distance("Paris", b).km
    return [Name(a if ka > kb else b, (b if ka > kb else a,)), Number(abs(ka - kb))]


def _cheaper(product: str) -> list[Fact]:
    rema, kiwi = _price(product, "Rema"), _price(product, "Kiwi")
    return [Name("Kiwi" if kiwi < rema else "Rema", ("Rema" if kiwi < rema else "Kiwi",)), Number(round(abs(rema - kiwi), 2))]


def _more_tables() -> list[Fact]:
    north, south = tb.stock("tables", "north").count, tb.stock("tables", "south").count
    return [Name("south" if south > north else "north", ("north" if south > north else "south",)), Number(abs(south - north))]


def _most_people(*names: str) -> list[Fact]:
    best = max(names, key=_pop)
    return [Name(best, tuple(n for n in names if n != best))]


QUESTIONS: tuple[Question, ...] = (
    Question("How many people live in Oslo and Bergen together?", lambda: [Number(_pop("Oslo") + _pop("Bergen"))]),
    Question("Which is farther from Paris, Rome or Madrid, and by how many km?", lambda: _farther("Rome", "Madrid")),
    Question("How many more people live in Stockholm than in Copenhagen?",
             lambda: [Number(_pop("Stockholm") - _pop("Copenhagen"))]),
    Question("Is coffee cheaper at Rema or at Kiwi, and by how many euros?", lambda: _cheaper("coffee")),
    Question("How many chairs do the north and south warehouses hold together?",
             lambda: [Number(tb.stock("chairs", "north").count + tb.stock("chairs", "south").count)]),
    Question("What do coffee and bread cost together at Kiwi, in euros?",
             lambda: [Number(round(_price("coffee", "Kiwi") + _price("bread", "Kiwi"), 2))]),
    Question("Which city has the most people: Oslo, Bergen or Trondheim?",
             lambda: _most_people("Oslo", "Bergen", "Trondheim")),
    Question("How many km is a round trip from Paris to Berlin and back?",
             lambda: [Number(2 * tb.distance("Paris", "Berlin").km)]),
    Question("Which warehouse holds more tables, north or south, and how many more?", _more_tables),
    Question("How many people live in Oslo, Bergen and Trondheim together?",
             lambda: [Number(_pop("Oslo") + _pop("Bergen") + _pop("Trondheim"))]),
)


# -- scoring (pure) ---------------------------------------------------------------------


def states_number(answer: str, value: float) -> bool:
    """Whether `answer` writes `value`: equal within the rounding of the decimals it is
    written with (`0.5` and `0.50` for 0.5; `1,009,650` for 1009650), sign aside."""
    for written, number in _numbers(answer):
        decimals = len(written.split(".")[1]) if "." in written and "e" not in written.lower() else 0
        if abs(abs(number) - abs(value)) <= 0.5 * 10 ** -decimals + 1e-9:
            return True
    return False


def _first(answer: str, name: str) -> int | None:
    m = re.search(rf"(?<!\w){re.escape(name)}(?!\w)", answer, re.I)
    return m.start() if m else None


def states_name(answer: str, fact: Name) -> bool:
    """Whether `answer` gives `fact.name`: it is there (a whole word, any case) and comes
    before every wrong choice that is there too."""
    at = _first(answer, fact.name)
    if at is None:
        return False
    return all(other is None or at < other for other in (_first(answer, o) for o in fact.others))


def score(answer: str, facts: list[Fact], question: str, results: list[Any]) -> dict[str, Any]:
    """Which facts `answer` states, and the numbers in it that nothing supports (not the
    results of the run's calls, `results`, nor the question, nor the expected facts)."""
    missing = []
    for fact in facts:
        ok = states_number(answer, fact.value) if isinstance(fact, Number) else states_name(answer, fact)
        if not ok:
            missing.append(describe(fact))
    truths = " ".join(repr(f.value) for f in facts if isinstance(f, Number))
    sources = [json.dumps(r, default=_plain) for r in results]
    unsupported = unsupported_numbers(answer, question, truths, *sources)
    return {"facts_ok": not missing, "missing": missing, "unsupported": unsupported}


def describe(fact: Fact) -> str:
    if isinstance(fact, Number):
        return f"{fact.value:.2f}".rstrip("0").rstrip(".")  # 1009650, 0.5, 52
    return fact.name


def _plain(value: Any) -> Any:
    """A call's result as JSON: pydantic models and dataclasses by their fields."""
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(value, k) for k in value.__dataclass_fields__}
    return repr(value)


# -- the run ----------------------------------------------------------------------------


def one(index: int, question: Question, client: Any, recorder: Recorder, planner: str) -> dict[str, Any]:
    """Ask one question end to end; score its answer."""
    from prefect_llmorch.flows.ask import ask_query
    from prefect_llmorch.llm.planning import PlanningFailed

    facts = question.facts()
    row: dict[str, Any] = {"question": index, "text": question.text, "planner": planner,
                           "expected": [describe(f) for f in facts]}
    recorder.reset()
    began = time.monotonic()
    try:
        # no machine-wide limit: others' runs on this shared machine may hold its slots
        report = ask_query(question.text, TOOLBOX, endpoint=client, planner=planner, cache=False,
                           concurrency_limit=None, processors=2)
    except PlanningFailed as exc:
        row.update(valid=False, first_valid=False, attempts=len(exc.attempts), answer="", facts_ok=False,
                   missing=row["expected"], unsupported=[], error=str(exc)[:800],
                   tokens=sum(a.prompt_tokens + a.completion_tokens for a in exc.attempts))
    except Exception as exc:  # the run failed (a call's error, the endpoint): a wrong answer, go on
        row.update(valid=None, first_valid=None, attempts=None, answer="", facts_ok=False, missing=row["expected"],
                   unsupported=[], error=f"{type(exc).__name__}: {exc}"[:800], tokens=None)
        report = getattr(exc, "report", None)
        if report is not None and report.planning is not None:
            row.update(valid=True, first_valid=report.planning.attempts == 1, attempts=report.planning.attempts,
                       plan=report.planning.plan, tokens=sum(report.planning.tokens.values()))
    else:
        answer = str(report.result)
        calls = {c.id: c.function for c in report.calls}
        results = [v for k, v in report.results.items() if calls.get(k) != "self"]
        planning = report.planning
        row.update(valid=True, first_valid=planning.attempts == 1 if planning else None,
                   attempts=planning.attempts if planning else None, plan=planning.plan if planning else "",
                   answer=answer, results={k: _plain(v) if not isinstance(v, (int, float, str)) else v
                                           for k, v in report.results.items()},
                   tokens=sum(planning.tokens.values()) if planning else None,
                   self_calls=sum(f == "self" for f in calls.values()),
                   **score(answer, facts, question.text, results))
    row["seconds"] = round(time.monotonic() - began, 2)
    row["llm_calls"] = recorder.count()
    return row


def summary(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per question, then one per planner."""
    out = ["| # | planner | valid first / final | facts | unsupported numbers | LLM calls | tokens | s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        facts = "yes" if r["facts_ok"] else "no (" + ", ".join(r["missing"]) + ")"
        out.append(f"| {r['question']} | {r['planner']} | {_yn(r['first_valid'])} / {_yn(r['valid'])} | {facts} | "
                   f"{', '.join(r['unsupported']) or '-'} | {r['llm_calls']} | {r['tokens'] if r['tokens'] is not None else '?'} "
                   f"| {r['seconds']:.1f} |")
    out += ["", "| planner | questions | valid first | valid final | answered | facts right | with unsupported numbers | "
            "LLM calls (mean) | tokens (mean) | s / question (median) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for planner in dict.fromkeys(r["planner"] for r in rows):
        rs = [r for r in rows if r["planner"] == planner]
        n = len(rs)
        tokens = [r["tokens"] for r in rs if r["tokens"] is not None]
        out.append(f"| {planner} | {n} | {sum(bool(r['first_valid']) for r in rs)}/{n} | {sum(bool(r['valid']) for r in rs)}/{n} | "
                   f"{sum(bool(r['answer']) for r in rs)}/{n} | {sum(r['facts_ok'] for r in rs)}/{n} | "
                   f"{sum(bool(r['unsupported']) for r in rs)}/{n} | "
                   f"{statistics.mean(r['llm_calls'] for r in rs):.1f} | {round(statistics.mean(tokens)) if tokens else '?'} | "
                   f"{statistics.median(r['seconds'] for r in rs):.1f} |")
    return "\n".join(out)


def _yn(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--questions", type=int, nargs="+", default=list(range(len(QUESTIONS))),
                        help="indexes into QUESTIONS (default: all)")
    parser.add_argument("--planner", nargs="+", default=["text", "json"], choices=("text", "json"))
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: start the local model)")
    parser.add_argument("--model", default=None, help="the model's name (default: the local model's)")
    parser.add_argument("--threads", type=int, help="the local server's CPU threads")
    parser.add_argument("--out", type=Path, help="write every answer here (JSON)")
    parser.add_argument("--summary", type=Path, nargs="+", help="print the tables of earlier --out files; ask nothing")
    args = parser.parse_args(argv)
    if args.summary:
        for path in args.summary:
            print(f"{path}:\n\n{summary(json.loads(path.read_text()))}\n")
        return 0
    recorder = Recorder()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    began = time.monotonic()
    with model_client(args.base_url, args.threads, recorder, model=args.model) as client:
        # one planner at a time: the server keeps the last prompt, which the next question's
        # planner prompt shares (instructions, examples, toolbox) when the planner is the same
        for planner in args.planner:
            for i in args.questions:
                row = one(i, QUESTIONS[i], client, recorder, planner)
                rows.append(row)
                if args.out:  # after every answer: a run stopped early keeps what it measured
                    args.out.write_text(json.dumps(rows, indent=1, default=repr))
                print(json.dumps({k: row.get(k) for k in ("question", "planner", "valid", "facts_ok", "missing",
                                                          "unsupported", "llm_calls", "tokens", "seconds", "answer")}),
                      flush=True)
    print(f"\n{len(rows)} answers in {time.monotonic() - began:.0f} s\n")
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
