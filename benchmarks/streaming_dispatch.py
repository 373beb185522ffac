"""`python benchmarks/streaming_dispatch.py` -- how much sooner calls start when the plan is streamed.

The scripted OpenAI-compatible server (`prefect_llmorch.testing.FakeLLM`, real HTTP, the real
`openai` client) writes a 6-call plan at a realistic speed (default 20 ms per token, tokens =
whitespace-separated words). Two ways to get the calls going, measured from the moment the
request is sent:

- non-streaming: `LLMClient.complete` waits for the whole answer, then `parse` gives the plan,
  and every call can start only then;
- streaming: `plan_query(..., on_call=...)` reads the answer as it streams and hands each
  call over as soon as its line is complete.

Prints the median (over `--runs`) time to the first dispatched call and to the mean and last
dispatched call for both, and the ratios non-streaming / streaming.

Options: --token-delay SECONDS (0.02), --latency SECONDS before the first token (0), --runs N (5).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect_llmorch.functions import Toolbox, compute, inout  # noqa: E402
from prefect_llmorch.llm.client import LLMClient  # noqa: E402
from prefect_llmorch.plan.parser import parse  # noqa: E402
from prefect_llmorch.flows.planner import plan_messages, plan_query  # noqa: E402
from prefect_llmorch.testing import FakeLLM  # noqa: E402


@inout
def search(query: str) -> str:
    """Search the web and return the top snippet."""
    return query


@inout
def fetch(url: str) -> str:
    """Download a web page as text."""
    return url


@compute
def summarize(text: str, words: int = 50) -> str:
    """Summarize a text in at most `words` words."""
    return text


TOOLBOX = Toolbox(search, fetch, summarize)
QUERY = "Compare the founding stories of Apple and Microsoft and say which company was founded first."
PLAN = """\
s1: search("Apple founding story Steve Jobs Steve Wozniak garage")
s2: search("Microsoft founding story Bill Gates Paul Allen Albuquerque")
s3: fetch("https://en.wikipedia.org/wiki/History_of_Apple_Inc.")
s4: fetch("https://en.wikipedia.org/wiki/History_of_Microsoft")
s5: summarize("Apple: {s1} {s3} Microsoft: {s2} {s4}", words=120)
s6: self("Using this summary: {s5} Which company was founded first, and how did their founding stories differ? Answer in three sentences.")
"""


def streaming_run(client: LLMClient) -> list[float]:
    """Seconds from the request to each call's dispatch, streaming."""
    times: list[float] = []
    started = time.monotonic()
    plan_query(QUERY, TOOLBOX, client, on_call=lambda call: times.append(time.monotonic() - started))
    return times


def blocking_run(client: LLMClient) -> list[float]:
    """Seconds from the request to each call's dispatch, waiting for the whole answer."""
    started = time.monotonic()
    text = client.complete(plan_messages(QUERY, TOOLBOX), temperature=0).text
    plan = parse(text, TOOLBOX)
    ready = time.monotonic() - started
    return [ready for _ in plan.calls]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    tokens = len(PLAN.split())
    with FakeLLM(default=PLAN, token_delay=args.token_delay, latency=args.latency) as server:
        client = LLMClient(server.base_url, "fake-llm", "sk-bench")
        streaming_run(client), blocking_run(client)  # warm up connections and imports
        stream = [streaming_run(client) for _ in range(args.runs)]
        block = [blocking_run(client) for _ in range(args.runs)]
    assert all(len(t) == 6 for t in stream + block), "every run must dispatch all 6 calls"

    def med(runs: list[list[float]], pick) -> float:  # type: ignore[no-untyped-def]
        return statistics.median(pick(t) for t in runs)

    rows = [
        ("first call", lambda t: t[0]),
        ("mean call", lambda t: sum(t) / len(t)),
        ("last call", lambda t: t[-1]),
    ]
    print(
        f"6-call plan, {tokens} tokens at {args.token_delay * 1000:g} ms/token, "
        f"latency {args.latency * 1000:g} ms, median of {args.runs} runs"
    )
    print(f"{'dispatch of':<12} {'non-streaming':>14} {'streaming':>10} {'ratio':>7}")
    for name, pick in rows:
        b, s = med(block, pick), med(stream, pick)
        print(f"{name:<12} {b * 1000:>12.0f}ms {s * 1000:>8.0f}ms {b / s:>6.2f}x")


if __name__ == "__main__":
    main()
