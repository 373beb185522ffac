"""`python benchmarks/joiner_real.py` -- the joiner's three questions with the real local model.

The same questions as `benchmarks/joiner.py` (a condition, a lookup that names the next
lookup, a count that decides how many calls follow), asked of the project's local model
(Qwen2.5-Coder-1.5B, `prefect_llmorch.llm.local`, started here unless `--base-url` is given)
through `ask_query(..., joiner="auto")` (or `--joiner always`) over `prefect_llmorch.examples.trips`. Printed per
question: whether the answer is right (the expected value, or every expected item named in
an answer text), whether the planner ended its plan with `join()`, the rounds the joiner
wrote, LLM requests and tokens, seconds, and the end state. At temperature 0 on one machine
the model's replies repeat; the questions are few, so this is a check, not a score.

    python benchmarks/joiner_real.py [--base-url http://127.0.0.1:8765/v1] [--repeat 1] [--joiner always]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import _setup  # noqa: F401  (paths, Prefect settings)

from joiner import CASES, TRIPS  # the same questions and expectations

from prefect_llmorch.flows.ask import ask_query
from prefect_llmorch.llm.client import LLMClient


def right(result: Any, expected: Any) -> bool:
    if result == expected:
        return True
    items = expected if isinstance(expected, list) else [p.strip() for p in str(expected).replace(",", ";").split(";")]
    text = str(result)
    return bool(items) and all(str(i).split(":")[0] in text for i in items)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", help="an OpenAI-compatible endpoint already serving the model")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--joiner", default="auto", choices=("auto", "always"),
                    help="auto: join when the planner ends its plan with join(); always: after every plan")
    args = ap.parse_args(argv)
    from prefect_llmorch.llm import local

    server = None
    if args.base_url:
        client = LLMClient(args.base_url, args.model, "local", timeout=600)
    else:
        server = local.start(port=0)
        client = server.client(timeout=600)
    rows = []
    try:
        for _ in range(args.repeat):
            for case in CASES:
                t = time.monotonic()
                try:
                    report = ask_query(case.question, TRIPS, processors=1, endpoint=client, concurrency_limit=None,
                                       joiner=args.joiner, recovery_rounds=1)
                    doc = report.to_json()
                    joiner = doc.get("joiner") or {}
                    rounds = joiner.get("joins") or []
                    plan = str((joiner.get("plans") or [doc.get("plan") or ""])[0])  # the planner's own plan
                    state = "Completed (JoinFailed)" if joiner.get("failed") else report.state
                    rows.append((case.name, right(report.result, case.expected), "join()" in plan, len(rounds),
                                 doc.get("tokens"), round(time.monotonic() - t, 1), state, str(report.result)[:80]))
                except Exception as exc:  # noqa: BLE001 - a failed ask is a row, not the end
                    rows.append((case.name, False, None, None, None, round(time.monotonic() - t, 1),
                                 type(exc).__name__, str(exc)[:80]))
                print(rows[-1], flush=True)
    finally:
        client.close()
        if server is not None and server.started_in:
            local.stop(server.port)
    print("\n| question | right | plan ended with join() | join rounds | tokens | s | state | answer |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    print(f"\nright: {sum(1 for r in rows if r[1])} of {len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
