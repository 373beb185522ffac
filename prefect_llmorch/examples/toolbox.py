"""The built-in example toolbox: real waiting for inout calls, real CPU work for compute calls.

The CLI's default `--toolbox` (`prefect_llmorch.examples.toolbox:toolbox`), used by the README's
main job (`llmorch run example:kitti -P 2`), the shipped plans `example:kitti`, `example:seo` and
`example:parallelqa`, `llmorch demo`, the tests and the benchmarks. Everything is local and
deterministic: no network, no API key (only a plan's `self` calls ask an LLM). The declared
`cost=` of each function is its estimated seconds (the critical-path policy's, until a history
of measured durations replaces it).

`quote` returns a structured result (a pydantic model), so a plan selects its fields:
`s3: compare(s1.summary, s2.summary)`; a field `Quote` does not have is a plan error
before anything runs.
"""

from __future__ import annotations

import hashlib
import time

from pydantic import BaseModel

from prefect_llmorch import Toolbox, compute, inout

# A tiny offline "search index" so answers are deterministic.
_FACTS = {
    "apple stock": "Apple (AAPL) closed at 231.40 USD, up 1.2% on the day.",
    "microsoft stock": "Microsoft (MSFT) closed at 452.10 USD, down 0.4% on the day.",
    "cheetah": "The cheetah reaches about 120 km/h.",
    "greyhound": "A greyhound reaches about 72 km/h.",
    "falcon": "The peregrine falcon dives at about 390 km/h.",
}


@inout(cost=0.4)
def search(query: str, latency: float = 0.4) -> str:
    """Search the web for `query` and return the best snippet."""
    time.sleep(latency)
    return _FACTS.get(query.strip().lower(), f"No result found for {query!r}.")


class Quote(BaseModel):
    """Today's stock quote of a company."""

    symbol: str
    price: float
    change_pct: float
    summary: str


_QUOTES = {
    "apple": Quote(symbol="AAPL", price=231.40, change_pct=1.2, summary=_FACTS["apple stock"]),
    "microsoft": Quote(symbol="MSFT", price=452.10, change_pct=-0.4, summary=_FACTS["microsoft stock"]),
}


@inout(cost=0.4)
def quote(company: str, latency: float = 0.4) -> Quote:
    """Today's stock quote of `company`: fields symbol, price, change_pct (percent) and summary."""
    time.sleep(latency)
    found = _QUOTES.get(company.strip().lower())
    if found is None:
        raise ValueError(f"no quote for {company!r}; known companies: Apple, Microsoft")
    return found


@inout(cost=0.5)
def chatbot(prompt: str, latency: float = 0.5) -> str:
    """Ask a (local, canned) chatbot to summarize or answer `prompt`."""
    time.sleep(latency)
    words = prompt.split()
    return f"Summary ({len(words)} words in): " + " ".join(words[:24])


@inout(cost=0.0)
def average(values: list[float]) -> float:
    """The mean of a list of numbers."""
    if not values:
        raise ValueError("average() of an empty list")
    return sum(values) / len(values)


@inout(cost=0.5)
def wait(seconds: float) -> float:
    """Wait `seconds` (an I/O-bound call: a device, a remote job); returns the seconds waited."""
    time.sleep(seconds)
    return seconds


@compute(cost=1.0)
def burn(seconds: float) -> float:
    """Hold a CPU for `seconds` of this thread's CPU time; returns the CPU seconds used."""
    start = time.thread_time()
    x = 0
    while time.thread_time() - start < seconds:
        for i in range(1000):
            x += i * i
    return round(time.thread_time() - start, 3)


@compute(cost=1.0)
def detect(image: str, size: int = 2000) -> int:
    """Count bright blobs in a synthetic `size` x `size` image named `image` (pure-Python CPU work)."""
    seed = int.from_bytes(hashlib.sha256(image.encode()).digest()[:4], "big")
    state = seed or 1
    count = 0
    for _ in range(size):
        row_bright = 0
        for _ in range(size):
            state = (1103515245 * state + 12345) & 0x7FFFFFFF
            if state % 97 == 0:
                row_bright += 1
        if row_bright > size // 97 + 1:
            count += 1
    return count


@compute(cost=0.5)
def compare(a: str, b: str) -> str:
    """Compare two quotes `a` and `b` and say which stock did better (parses the % change)."""
    import re

    def change(text: str) -> float:
        m = re.search(r"(up|down) ([0-9.]+)%", text)
        if not m:
            return 0.0
        return float(m.group(2)) * (1 if m.group(1) == "up" else -1)

    ca, cb = change(a), change(b)
    better = "first" if ca >= cb else "second"
    return f"The {better} stock did better ({ca:+.1f}% vs {cb:+.1f}%)."


@compute(cost=1.0)
def count_primes(limit: int) -> int:
    """Count the primes below `limit` by trial division (CPU-bound)."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    count = 0
    for n in range(2, limit):
        d = 2
        while d * d <= n:
            if n % d == 0:
                break
            d += 1
        else:
            count += 1
    return count


toolbox = Toolbox(search, quote, chatbot, average, wait, burn, detect, compare, count_primes)
