"""`python benchmarks/bfcl.py` -- BFCL's parallel questions planned by a real model, ours against the plain way.

The Berkeley Function-Calling Leaderboard's `parallel` (one function, called several times) and
`parallel_multiple` (several functions) questions, from the `bfcl-eval` package (data and
checker; install it without its many dependencies: `pip install --no-deps bfcl-eval==2026.3.23`).
Each question is answered by the same model, by three systems:

- `text`: our planner (`plan_query`, the plan language, repairs of plan errors), the question's
  functions as a `Toolbox` (JSON types as annotations, enums as `Literal`s);
- `json`: our planner in the JSON plan form under the toolbox's JSON schema;
- `plain`: the question and the functions as JSON, "answer with a JSON list of calls".

Calls are scored with BFCL's own checker (`ast_checker`, the leaderboard's AST matching:
function names, and each argument against the possible answers, calls in any order). A plan's
last `self(...)` call, which our prompt asks for, is not a call of the question's functions
and is left out before scoring. Also recorded: whether our first answer was a valid plan and
whether the final one was (after repairs), tokens and seconds per question.

The model: `--base-url` of an OpenAI-compatible server, or by default the project's own
local model (`prefect_llmorch.llm.local`, the `local-llm` extra) started on a free port.

Options: --n N questions per category (first N; default 10), --categories, --systems,
--threads (the local server's), --out FILE (JSON with every answer, written after each).
"""

from __future__ import annotations

import argparse
import importlib.resources
import inspect
import json
import re
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect_llmorch.functions import FunctionSpec, Toolbox  # noqa: E402
from prefect_llmorch.llm.client import LLMClient, LLMError  # noqa: E402
from prefect_llmorch.llm.planning import PlanningFailed, plan_query  # noqa: E402
from prefect_llmorch.plan.parser import UNKNOWN, _static  # noqa: E402

MODEL_NAME = "llmorch-bench"
CATEGORIES = ("parallel", "parallel_multiple")
SYSTEMS = ("text", "json", "plain")
_JSON_TYPES: dict[str, Any] = {"string": str, "integer": int, "float": float, "number": float, "boolean": bool,
                               "array": list, "tuple": list, "dict": dict, "object": dict, "any": Any}


def _checker() -> Any:
    """BFCL's `ast_checker`. Its module imports the leaderboard's model table only to know
    which models write `a.b` as `a_b`; a table with just our name (we map names back
    ourselves) keeps the dozens of model SDKs it imports out."""
    table = types.ModuleType("bfcl_eval.constants.model_config")
    table.MODEL_CONFIG_MAPPING = {MODEL_NAME: types.SimpleNamespace(underscore_to_dot=False)}  # type: ignore[attr-defined]
    sys.modules.setdefault("bfcl_eval.constants.model_config", table)
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

    return ast_checker


def load(category: str, n: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The first `n` (question, possible answer) pairs of a category."""
    data = importlib.resources.files("bfcl_eval") / "data"

    def lines(path: Any) -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    questions = lines(data / f"BFCL_v4_{category}.json")[:n]
    answers = {a["id"]: a for a in lines(data / "possible_answer" / f"BFCL_v4_{category}.json")}
    return [(q, answers[q["id"]]) for q in questions]


def plan_name(name: str) -> str:
    """A BFCL name as a plan identifier (`spotify.play` -> `spotify_play`)."""
    return re.sub(r"\W", "_", name)


def _placeholder(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - plans are never run here
    raise RuntimeError("BFCL functions are only planned, never called")


def toolbox_of(functions: list[dict[str, Any]]) -> tuple[Toolbox, dict[str, str]]:
    """A `Toolbox` with one spec per BFCL function (signature from its JSON schema,
    description with each parameter's), and plan names -> BFCL names."""
    specs: list[FunctionSpec] = []
    names: dict[str, str] = {}
    for doc in functions:
        params = doc.get("parameters", {})
        required = set(params.get("required", []))
        props = params.get("properties", {})
        parameters = []
        lines = [doc.get("description", "")]
        for name in sorted(props, key=lambda p: p not in required):  # required first
            prop = props[name]
            annotation: Any = _JSON_TYPES.get(prop.get("type", "any"), Any)
            if prop.get("enum") and all(isinstance(v, (str, int)) for v in prop["enum"]):
                annotation = Literal[tuple(prop["enum"])]  # type: ignore[valid-type]
            default = inspect.Parameter.empty if name in required else prop.get("default")
            parameters.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                default=default, annotation=annotation))
            lines.append(f"  {name}: {prop.get('description', '')}".rstrip())
        pname = plan_name(doc["name"])
        names[pname] = doc["name"]
        specs.append(FunctionSpec(name=pname, kind="inout", fn=_placeholder, description="\n".join(lines),
                                  _signature=inspect.Signature(parameters)))
    return Toolbox(*specs), names


def calls_of_plan(plan: Any, toolbox: Toolbox, names: dict[str, str]) -> list[dict[str, Any]]:
    """BFCL's output form, `[{name: {param: value}}]`, from a plan's calls of the
    question's functions (values known at plan time; a reference stays a `{ref}` string)."""
    out = []
    for call in plan.calls:
        if call.function not in names:
            continue  # `self`
        spec = toolbox[call.function]
        problems: list[str] = []
        args = tuple(_static(v, problems) for v in call.positional)
        kwargs = {k: _static(v, problems) for k, v in call.keywords.items()}
        bound = spec.bind(args, kwargs).arguments
        out.append({names[call.function]: {k: (f"{{{k}}}" if v is UNKNOWN else v) for k, v in bound.items()}})
    return out


PLAIN_PROMPT = """You are given functions, described in JSON:
{functions}

Answer the user's request by calling these functions. Answer with only a JSON list of calls, \
each {{"name": "<function name>", "arguments": {{<argument>: <value>, ...}}}}, and nothing else."""


def plain(client: LLMClient, question: str, functions: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The plain way: the functions as JSON, one answer, parsed as a JSON list of calls."""
    messages = [{"role": "system", "content": PLAIN_PROMPT.format(functions=json.dumps(functions))},
                {"role": "user", "content": question}]
    reply = client.complete(messages, temperature=0.0)
    text = reply.text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    text = fenced.group(1) if fenced else text
    info = {"text": reply.text, "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
    try:
        doc = json.loads(text)
    except ValueError:
        return [], {**info, "valid": False}
    doc = doc if isinstance(doc, list) else [doc]
    calls = [{c["name"]: c.get("arguments", {})} for c in doc
             if isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("arguments", {}), dict)]
    return calls, {**info, "valid": len(calls) == len(doc)}


def ours(client: LLMClient, question: str, functions: list[dict[str, Any]], mode: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    toolbox, names = toolbox_of(functions)
    try:
        result = plan_query(question, toolbox, client, attempts=3, replans=0, mode=mode)
    except LLMError as exc:
        # the endpoint refused a request: a repair quoting an answer that filled the context
        # (parallel_multiple_14 json: 2,457 tokens repeating one line) is over the context
        # size, HTTP 400. No plan, as a failed planning; the run goes on
        return [], {"valid": False, "first_valid": False, "attempts": 0, "text": "", "prompt_tokens": 0,
                    "completion_tokens": 0, "error": f"LLMError: {exc}"[:500]}
    except PlanningFailed as exc:
        attempts = getattr(exc, "attempts", ())
        return [], {"valid": False, "first_valid": False, "attempts": len(attempts), "text": "",
                    "prompt_tokens": sum(a.prompt_tokens for a in attempts),
                    "completion_tokens": sum(a.completion_tokens for a in attempts), "error": str(exc)[:500]}
    return calls_of_plan(result.plan, toolbox, names), {
        "valid": True, "first_valid": not result.attempts[0].errors, "attempts": len(result.attempts),
        "text": result.text, "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}


def run(client: LLMClient, n: int, categories: list[str], systems: list[str],
        out: Path | None = None) -> list[dict[str, Any]]:
    from bfcl_eval.constants.enums import Language

    check = _checker()
    rows = []
    # one system at a time: the server keeps the last prompt, and the next question's prompt
    # shares its system message (instructions, examples) when the system is the same
    for system in systems:
        for category in categories:
            for question, answer in load(category, n):
                text = question["question"][0][-1]["content"]
                began = time.monotonic()
                if system == "plain":
                    calls, info = plain(client, text, question["function"])
                else:
                    calls, info = ours(client, text, question["function"], system)
                seconds = time.monotonic() - began
                try:
                    verdict = check(question["function"], calls, answer["ground_truth"], Language.PYTHON,
                                    category, MODEL_NAME)
                except Exception as exc:  # the checker on malformed output
                    verdict = {"valid": False, "error": [repr(exc)]}
                row = {"id": question["id"], "category": category, "system": system, "correct": bool(verdict["valid"]),
                       "checker": verdict.get("error"), "calls": calls, "seconds": round(seconds, 2), **info}
                rows.append(row)
                if out is not None:  # after every answer: a run stopped early keeps what it measured
                    out.write_text(json.dumps(rows, indent=1, default=repr))
                print(f"{question['id']:<22} {system:<5} {'ok ' if row['correct'] else 'no '} {seconds:6.1f} s "
                      f"{info.get('prompt_tokens', 0)}+{info.get('completion_tokens', 0)} tokens", flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    """A markdown table: per category and system, correct, valid, tokens and time."""
    lines = ["| category | system | correct | valid first | valid final | prompt tokens | completion tokens | s / question (median) |",
             "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["category"], r["system"]) for r in rows}, key=lambda k: (k[0], SYSTEMS.index(k[1])))
    for category, system in keys:
        rs = [r for r in rows if r["category"] == category and r["system"] == system]
        n = len(rs)
        first = sum(r.get("first_valid", r["valid"]) for r in rs)
        lines.append(
            f"| {category} | {system} | {sum(r['correct'] for r in rs)}/{n} | {first}/{n} | "
            f"{sum(r['valid'] for r in rs)}/{n} | {round(statistics.mean(r['prompt_tokens'] for r in rs))} | "
            f"{round(statistics.mean(r['completion_tokens'] for r in rs))} | {statistics.median(r['seconds'] for r in rs):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: start the local model)")
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--threads", type=int, help="the local server's CPU threads")
    parser.add_argument("--out", type=Path, help="write every answer here (JSON)")
    args = parser.parse_args(argv)
    from prefect_llmorch.llm import local

    server = None
    if args.base_url:
        client = LLMClient(args.base_url, args.model, "local", timeout=600)
    else:
        server = local.start(port=0, threads=args.threads)
        client = server.client(timeout=600)
    try:
        began = time.monotonic()
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = run(client, args.n, args.categories, args.systems, out=args.out)
        print(f"\n{len(rows)} answers in {time.monotonic() - began:.0f} s\n")
        print(summary(rows))
    finally:
        client.close()
        if server is not None and server.started_in:
            local.stop(server.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
