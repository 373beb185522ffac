"""`python benchmarks/nestful.py` -- NESTFUL's nested sequences planned by a real model, ours against the plain way.

NESTFUL (IBM, 2024; the `nestful-wrapper` wheel, 0.1.7, install it without its heavy
dependencies: `pip install --no-deps nestful-wrapper==0.1.7`) has questions whose calls use
each other's results: `calculate_pace(distance=$var1.distance$, ...)`. Its non-executable
samples come from two sources, `glaive` (169) and `sgd` (46), each with a catalog of functions
whose parameters *and output fields* are described. Each question is answered by the same
model, three ways:

- `text`: our planner (`plan_query`, the plan language, repairs of plan errors);
- `json`: our planner in the JSON plan form under the toolbox's JSON schema;
- `plain`: the question and the functions as JSON (NESTFUL's own catalog entries), "answer
  with a JSON list of calls", each with a `label`, results used as `$label.field$` (NESTFUL's
  form; without a way to write a reference the plain prompt could not express nesting at all).

The functions offered with a question: the ones its gold sequence calls, plus two others from
the same catalog (a fixed choice per question), sorted by name. In our toolbox each function
returns a TypedDict of its output fields, so `s1.distance` is checked at plan time against
the fields the catalog declares, and passed on typed.

Scores (both sides parsed into the same `Plan` form: NESTFUL's gold by our parser's NESTFUL
dialect, our plans by the planner, the plain answer by the NESTFUL dialect too,
forgiving what only our reader asks: a `label` on every call, each key once; the final
`var_result` / `self` step is left out of both): a reference is written as the function and
occurrence it points to, and its field path (`$calculate_route#1.distance$`), so labels and
ids do not matter, only what is used; values compare with numbers as numbers and strings
without case and surrounding space.

- exact sequence: the same calls, with the same arguments, in the same order (NESTFUL's full
  sequence accuracy); `exact any order` allows another order (independent calls may be
  written in any order, and they run in parallel anyway);
- F1 of functions (multiset of names) and of arguments (multiset of (function, parameter,
  value)), per question, averaged;
- valid plan first / after repairs, tokens, seconds per question.

Gold sequences our parser rejects (a reference to a label no call defines, a label used
twice: 3 of glaive's, 2 of sgd's) are skipped: they name no sequence to compare with. So, by
default (`--all` keeps them), are golds that break their catalog's own declared types (47 of
the other 166 of glaive's: `optimize_route="time"` where the catalog says boolean, a float
passed where it says str; 4 of 44 of sgd's: a value outside `allowed_values`): there the
catalog and the gold disagree on what is right, and our type check sides with the catalog.
An argument left at the catalog's default counts as written with it (sgd's golds spell out
`fare_type="Economy"`).

Options: --n N questions per source (the first N with a well-formed gold; default 6),
--skip K (leave out the first K of them: `--n 6 --skip 6` is the 7th to 12th),
--sources, --systems, --base-url, --threads, --out FILE (JSON with every answer, written after
each), --summary FILE (the table of a saved FILE; with --rescore, its plain answers read again).
"""

from __future__ import annotations

import argparse
import importlib.resources
import inspect
import json
import keyword
import random
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prefect_llmorch.functions import FunctionSpec, Toolbox  # noqa: E402
from prefect_llmorch.llm.client import LLMClient  # noqa: E402
from prefect_llmorch.llm.planning import PlanningFailed, plan_query  # noqa: E402
from prefect_llmorch.plan.errors import PlanError  # noqa: E402
from prefect_llmorch.plan.model import DictExpr, Expr, ListExpr, Literal as Lit, Plan, Ref, Template  # noqa: E402
from prefect_llmorch.plan.parser import parse  # noqa: E402

SOURCES = ("glaive", "sgd")
SYSTEMS = ("text", "json", "plain")
DISTRACTORS = 2
_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "float": float, "boolean": bool,
                          "array": list, "object": dict}


def plan_name(name: str) -> str:
    """A NESTFUL name as a plan identifier (`Buses.FindBus` -> `Buses_FindBus`)."""
    return re.sub(r"\W", "_", name)


def param_name(name: str) -> str:
    """A parameter name the signature can hold (`from` -> `from_`); gold names go through it too."""
    name = re.sub(r"\W", "_", name)
    return name + "_" if keyword.iskeyword(name) or not name.isidentifier() else name


def _read(source: str, kind: str) -> Any:
    return json.loads((importlib.resources.files("data_v1") / "non-executable"
                       / f"non-executable-{source}-{kind}.json").read_text())


def gold_plan(output: list[dict[str, Any]]) -> Plan:
    """A gold sequence as a `Plan` (NESTFUL dialect), function names made identifiers.

    Raises:
        PlanError: the gold is not a well-formed sequence.
    """
    return parse(json.dumps(_renamed(output)))


def _renamed(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NESTFUL steps with names as the toolbox spells them (`from` -> `from_`)."""
    return [{**step, "name": plan_name(str(step.get("name", ""))),
             "arguments": {param_name(k) if step.get("name") != "var_result" else k: v
                           for k, v in (step.get("arguments") or {}).items()}}
            for step in steps]


def load(source: str, n: int, consistent: bool = True,
         skip: int = 0) -> tuple[list[tuple[int, dict[str, Any], Plan]], dict[str, dict[str, Any]]]:
    """The first `n` questions of `source` with a well-formed gold, after the first `skip` of
    them, as (index, sample, gold plan), and the source's catalog by plan name. `consistent`:
    only golds that are valid plans for the catalog's own declared types (a third of glaive's
    pass a text where the catalog says boolean, a float where it says str)."""
    catalog = {plan_name(f["name"]): f for f in _read(source, "spec")}
    out = []
    for i, sample in enumerate(_read(source, "data")):
        if len(out) == skip + n:
            break
        try:
            gold = gold_plan(sample["output"])
            if consistent:
                parse(gold.to_text("nestful"), toolbox_of([catalog[f] for f in dict.fromkeys(c.function for c in gold.calls)]))
        except (PlanError, KeyError):
            continue
        out.append((i, sample, gold))
    return out[skip:], catalog


def offered(gold: Plan, catalog: dict[str, dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The functions offered with a question: the gold's, plus `DISTRACTORS` others of the
    catalog (a fixed choice per question), sorted by name."""
    used = {c.function for c in gold.calls}
    others = sorted(set(catalog) - used)
    extra = random.Random(seed).sample(others, min(DISTRACTORS, len(others)))
    return [catalog[name] for name in sorted(used | set(extra))]


def _placeholder(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - plans are never run here
    raise RuntimeError("NESTFUL functions are only planned, never called")


def _annotation(prop: dict[str, Any]) -> Any:
    allowed = prop.get("allowed_values") or prop.get("enum")
    if allowed and all(isinstance(v, (str, int)) for v in allowed):
        # sgd writes every value as text ("1", "True"): the number or boolean it spells is
        # the same value (scored alike, see `_norm`), so the type takes both
        spelled = {"True": True, "False": False}
        extra = [spelled.get(v, v) for v in allowed if isinstance(v, str)]
        extra = [int(v) if isinstance(v, str) and v.isdigit() else v for v in extra]
        return Literal[tuple(dict.fromkeys([*allowed, *(v for v in extra if not isinstance(v, str))]))]  # type: ignore[valid-type]
    return _TYPES.get(prop.get("type", ""), Any)


def toolbox_of(functions: Sequence[dict[str, Any]]) -> Toolbox:
    """A `Toolbox` of NESTFUL catalog entries: parameters typed from the catalog (types,
    allowed values, required or with their default), each returning a TypedDict of its
    output fields (so field references are checked at plan time)."""
    specs = []
    for doc in functions:
        name = plan_name(doc["name"])
        props = doc.get("query_parameters") or {}
        lines = [doc.get("description", "")]
        parameters = []
        for pname in sorted(props, key=lambda p: not props[p].get("required", False)):  # required first
            prop = props[pname]
            default = (inspect.Parameter.empty if prop.get("required", False)
                       else prop.get("default_value", prop.get("default")))
            annotation = _annotation(prop)
            if default is None and annotation is not Any:
                # optional without a default: left out, it is None, which the type must take
                # (else `is_unisex=None`, the signature's own default, is a plan error)
                annotation = Optional[annotation]
            parameters.append(inspect.Parameter(param_name(pname), inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                default=default, annotation=annotation))
            line = f"  {param_name(pname)}: {prop.get('description', '')}".rstrip()
            if isinstance(prop.get("properties"), dict) and prop["properties"]:
                # an object's keys, as the catalog declares them (the plain prompt shows them;
                # without them the model guessed `start` for glaive_19's `start_date`)
                line += " (an object: " + ", ".join(
                    f"{k}: {_TYPES.get(v.get('type', ''), Any).__name__}" + (f" ({v['description']})" if v.get("description") else "")
                    for k, v in prop["properties"].items() if isinstance(v, dict)) + ")"
            lines.append(line)
        # by the declared type only: sgd declares none, and its output fields' allowed
        # values as `Literal`s measured no better (docs/real_model.md) for 7% more prompt
        fields = {k: _TYPES.get(v.get("type", ""), Any) for k, v in (doc.get("output_parameters") or {}).items()}
        result = TypedDict(f"{name}_result", fields) if fields else Any  # type: ignore[misc, operator]

        def fn(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
            return _placeholder()

        fn.__annotations__ = {"return": result}  # the declared result: fields checked at plan time
        fn.__name__ = name
        specs.append(FunctionSpec(name=name, kind="inout", fn=fn, description="\n".join(lines),
                                  _signature=inspect.Signature(parameters, return_annotation=result)))
    return Toolbox(*specs)


# -- scoring ------------------------------------------------------------------------------


def _norm(value: Any) -> Any:
    """Numbers as numbers (also when written as text, as sgd does), text without case."""
    if isinstance(value, bool):
        return str(value).lower()  # True and sgd's "True" alike
    if value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            return text.lower()
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _norm(v)) for k, v in value.items()))
    return repr(value)


def _value(expr: Expr, names: dict[str, str]) -> Any:
    """An argument in comparable form; a reference as `$function#k.path$`."""
    if isinstance(expr, Ref):
        path = "".join(f".{s}" if isinstance(s, str) else f"[{s}]" for s in expr.path)
        return f"${names.get(expr.id, expr.id)}{path}$"
    if isinstance(expr, Lit):
        return _norm(expr.value)
    if isinstance(expr, ListExpr):
        return tuple(_value(e, names) for e in expr.items)
    if isinstance(expr, DictExpr):
        return tuple(sorted((str(k), _value(v, names)) for k, v in expr.items))
    if isinstance(expr, Template):
        return "".join(p if isinstance(p, str) else _value(p, names) for p in expr.parts).strip().lower()
    return repr(expr)


def calls_of(plan: Plan, toolbox: Toolbox | None = None) -> list[tuple[str, tuple[tuple[str, Any], ...]]]:
    """The plan's calls as (function, sorted (parameter, value)), without `self`; positional
    arguments named from the toolbox's signatures."""
    names: dict[str, str] = {}
    seen: Counter[str] = Counter()
    out = []
    for call in plan.calls:
        if call.function == "self":
            continue
        seen[call.function] += 1
        names[call.id] = f"{call.function}#{seen[call.function]}"
        params = list(toolbox[call.function].signature.parameters) if toolbox and call.function in toolbox else []
        args = []
        for i, arg in enumerate(call.args):
            key = param_name(arg.name) if arg.name else (params[i] if i < len(params) else f"#{i}")
            args.append((key, _value(arg.value, names)))
        if toolbox is not None and call.function in toolbox:
            # an argument left at the catalog's default is the same call as one that spells it out
            given = {k for k, _ in args}
            args += [(k, _norm(p.default)) for k, p in toolbox[call.function].signature.parameters.items()
                     if k not in given and p.default not in (inspect.Parameter.empty, None)]
        out.append((call.function, tuple(sorted(args, key=lambda kv: kv[0]))))
    return out


def _f1(predicted: Counter[Any], gold: Counter[Any]) -> float:
    if not predicted and not gold:
        return 1.0
    hits = sum((predicted & gold).values())
    if not hits:
        return 0.0
    precision, recall = hits / sum(predicted.values()), hits / sum(gold.values())
    return 2 * precision * recall / (precision + recall)


def score(predicted: list[tuple[str, Any]], gold: list[tuple[str, Any]]) -> dict[str, Any]:
    """exact (in order), exact in any order, F1 of functions, F1 of arguments."""
    return {
        "exact": predicted == gold,
        "exact_any_order": Counter(predicted) == Counter(gold),
        "f1_functions": _f1(Counter(f for f, _ in predicted), Counter(f for f, _ in gold)),
        "f1_arguments": _f1(Counter((f, a) for f, args in predicted for a in args),
                            Counter((f, a) for f, args in gold for a in args)),
    }


# -- the systems --------------------------------------------------------------------------

PLAIN_PROMPT = """You are given functions, described in JSON:
{functions}

Answer the user's request by calling these functions. Answer with only a JSON list of calls, \
each {{"name": "<function name>", "arguments": {{<argument>: <value>, ...}}, "label": "var1"}} \
(labels var1, var2, ... in order), and nothing else. To pass an output of an earlier call, \
write "$<label>.<output field>$" as the value, e.g. "$var1.price$"."""


def plain(client: LLMClient, question: str, functions: list[dict[str, Any]],
          toolbox: Toolbox) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """The plain way: the catalog entries as JSON, one answer, read in NESTFUL's form."""
    docs = [{**f, "name": plan_name(f["name"])} for f in functions]
    messages = [{"role": "system", "content": PLAIN_PROMPT.format(functions=json.dumps(docs))},
                {"role": "user", "content": question}]
    reply = client.complete(messages, temperature=0.0)
    info: dict[str, Any] = {"text": reply.text, "prompt_tokens": reply.prompt_tokens,
                            "completion_tokens": reply.completion_tokens, "attempts": 1}
    calls, read = read_plain(reply.text, toolbox)
    return calls, {**info, **read}


def _json_list(text: str) -> list[dict[str, Any]] | None:
    """`text` as a JSON list of objects (a key given twice: its last value), else None."""
    try:
        steps = json.loads(text)
    except json.JSONDecodeError:
        return None
    return steps if isinstance(steps, list) and all(isinstance(s, dict) for s in steps) else None


def _forgiving(text: str) -> Plan:
    """What any JSON reader makes of a list of calls (a key given twice: its last value),
    with a missing `label` filled in (the first unused `varN`): the plain answer's calls,
    when our NESTFUL reader refuses it for its form alone.

    Raises:
        PlanError: not a JSON list of calls even so.
    """
    steps = _json_list(text)
    if steps is None:
        return parse(text)  # raises the reader's own error
    used = {s.get("label") for s in steps}
    free = (f"var{k}" for k in range(1, 2 * len(steps) + 2) if f"var{k}" not in used)
    return parse(json.dumps([s if "label" in s or s.get("name") == "var_result" else {**s, "label": next(free)}
                             for s in steps]))


def read_plain(answer: str, toolbox: Toolbox) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """A plain answer's calls (in a code fence or not) and whether it is valid as written.

    Read as NESTFUL's form; when our reader refuses it for its form alone (a call without a
    `label`, a key given twice), its calls are still scored, read as any JSON reader reads
    them (`forgiven`): the plain way is not marked down for what our reader asks of a plan.
    `valid` is always the answer as written, for these functions."""
    text = answer.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    text = fenced.group(1).strip() if fenced else text
    forgiven, valid, error = False, False, None
    try:
        plan = parse(text)  # NESTFUL's form, no toolbox: read what was written
    except PlanError as exc:
        error = str(exc)[:300]
        try:
            plan, forgiven = _forgiving(text), True
        except PlanError:
            return [], {"valid": False, "first_valid": False, "error": error}
    if not forgiven:
        steps = _json_list(text)
        try:  # and whether it is a valid plan for these functions, named as the catalog names them
            parse(json.dumps(_renamed(steps)) if steps is not None else text, toolbox)
            valid = True
        except PlanError as exc:
            error = str(exc)[:300]
    return calls_of(plan, toolbox), {"valid": valid, "first_valid": valid, "error": error, "forgiven": forgiven}


def ours(client: LLMClient, question: str, toolbox: Toolbox, mode: str) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    try:
        result = plan_query(question, toolbox, client, attempts=3, replans=0, mode=mode)
    except PlanningFailed as exc:
        return [], {"valid": False, "first_valid": False, "attempts": len(exc.attempts), "text": exc.attempts[-1].text,
                    "prompt_tokens": sum(a.prompt_tokens for a in exc.attempts),
                    "completion_tokens": sum(a.completion_tokens for a in exc.attempts), "error": str(exc)[:500]}
    return calls_of(result.plan, toolbox), {
        "valid": True, "first_valid": result.attempts[0].ok, "attempts": len(result.attempts),
        "text": result.text, "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}


def run(client: LLMClient, n: int, sources: Sequence[str], systems: Sequence[str],
        consistent: bool = True, out: Path | None = None, skip: int = 0) -> list[dict[str, Any]]:
    rows = []
    questions = [(source, *q, catalog) for source in sources
                 for qs, catalog in [load(source, n, consistent, skip)]
                 for q in qs]
    # one system at a time: llama.cpp reuses the cached prefix of the last prompt, and one
    # system's prompts share their instructions and examples
    for system in systems:
        for source, index, sample, gold, catalog in questions:
            functions = offered(gold, catalog, seed=index)
            toolbox = toolbox_of(functions)
            began = time.monotonic()
            if system == "plain":
                calls, info = plain(client, sample["input"], functions, toolbox)
            else:
                calls, info = ours(client, sample["input"], toolbox, system)
            seconds = time.monotonic() - began
            row = {"id": f"{source}_{index}", "source": source, "system": system, "seconds": round(seconds, 2),
                   **score(calls, calls_of(gold, toolbox)), "calls": calls, **info}
            rows.append(row)
            if out is not None:  # after every answer: a long run stopped early keeps what it measured
                out.write_text(json.dumps(rows, indent=1, default=repr))
            print(f"{row['id']:<11} {system:<5} {'exact' if row['exact'] else '     '} "
                  f"F1 fn {row['f1_functions']:.2f} args {row['f1_arguments']:.2f} {seconds:6.1f} s "
                  f"{info['prompt_tokens']}+{info['completion_tokens']} tokens", flush=True)
    return rows


def rescore(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Saved rows with the plain answers read and scored again by today's `read_plain`
    (no model: the answers are in the rows); the planners' rows as they were."""
    golds: dict[str, tuple[Plan, Toolbox]] = {}
    for source in {r["source"] for r in rows if r["system"] == "plain"}:
        wanted = {int(r["id"].rsplit("_", 1)[1]) for r in rows if r["source"] == source}
        questions, catalog = load(source, 10_000, consistent=False)
        for index, _sample, gold in questions:
            if index in wanted:
                golds[f"{source}_{index}"] = gold, toolbox_of(offered(gold, catalog, seed=index))
    out = []
    for row in rows:
        if row["system"] == "plain":
            gold, toolbox = golds[row["id"]]
            calls, read = read_plain(row["text"], toolbox)
            row = {**row, **read, **score(calls, calls_of(gold, toolbox)), "calls": calls}
        out.append(row)
    return out


def summary(rows: list[dict[str, Any]]) -> str:
    """A markdown table: per source (and all) and system."""
    lines = ["| questions | system | exact sequence | exact any order | F1 functions | F1 arguments | valid first | "
             "valid final | prompt tokens | completion tokens | s / question (median) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = [(s, [r for r in rows if r["source"] == s]) for s in SOURCES] + [("all", rows)]
    for name, group in groups:
        for system in SYSTEMS:
            rs = [r for r in group if r["system"] == system]
            if not rs:
                continue
            n = len(rs)
            lines.append(
                f"| {name} ({n}) | {system} | {sum(r['exact'] for r in rs)}/{n} | {sum(r['exact_any_order'] for r in rs)}/{n} | "
                f"{statistics.mean(r['f1_functions'] for r in rs):.2f} | {statistics.mean(r['f1_arguments'] for r in rs):.2f} | "
                f"{sum(r['first_valid'] for r in rs)}/{n} | {sum(r['valid'] for r in rs)}/{n} | "
                f"{round(statistics.mean(r['prompt_tokens'] for r in rs))} | "
                f"{round(statistics.mean(r['completion_tokens'] for r in rs))} | "
                f"{statistics.median(r['seconds'] for r in rs):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--skip", type=int, default=0,
                        help="leave out the first SKIP questions per source (--n 6 --skip 6: the 7th to 12th)")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: start the local model)")
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--threads", type=int, help="the local server's CPU threads")
    parser.add_argument("--all", action="store_true",
                        help="also golds that break the catalog's own types (skipped by default)")
    parser.add_argument("--out", type=Path, help="write every answer here (JSON)")
    parser.add_argument("--summary", type=Path, metavar="FILE", help="only print the table of a saved --out FILE")
    parser.add_argument("--rescore", action="store_true",
                        help="with --summary: read the saved plain answers again first (today's reader)")
    args = parser.parse_args(argv)
    if args.summary:
        saved = json.loads(args.summary.read_text())
        print(summary(rescore(saved) if args.rescore else saved))
        return 0
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
        rows = run(client, args.n, args.sources, args.systems, consistent=not args.all, out=args.out,
                   skip=args.skip)
        print(f"\n{len(rows)} answers in {time.monotonic() - began:.0f} s\n")
        print(summary(rows))
    finally:
        client.close()
        if server is not None and server.started_in:
            local.stop(server.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
