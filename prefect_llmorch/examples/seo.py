"""The paper's SEO illustration: two keyword searches, two analysis scripts, a chatbot.

A marketer asks "how should I improve my page's ranking for these keywords?". The plan
searches for each keyword (I/O-bound, through a search API whose key lives in the
`search-api` ToolCredentials block), runs two analysis scripts on the results (CPU-bound:
keyword density over the crawled pages, and readability of the snippets), and has a
chatbot write the advice. The search index is local and deterministic: no network.

    llmorch check prefect_llmorch/examples/seo_audit.plan -t prefect_llmorch.examples.seo:toolbox
"""

from __future__ import annotations

import hashlib
import re
import time

from prefect_llmorch import Toolbox, compute, inout

from prefect_llmorch.examples.toolbox import chatbot

_VOCAB = (
    "prefect workflow orchestration python data pipeline schedule retry task flow deploy "
    "cloud server worker agent dashboard monitor alert airflow dagster cron queue parallel "
    "function call llm graph cache result state log artifact block secret"
).split()


def _crawl(url: str, words: int) -> list[str]:
    """A deterministic synthetic page of `words` words for `url` (what a crawler would fetch)."""
    seed = int.from_bytes(hashlib.sha256(url.encode()).digest()[:8], "big") or 1
    out = []
    for _ in range(words):
        seed = (6364136223846793005 * seed + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out.append(_VOCAB[(seed >> 33) % len(_VOCAB)])
    return out


@inout(cost=0.4, credentials="search-api")
def search(query: str, credentials: dict[str, str], top: int = 5) -> list[str]:
    """Search the web for `query`; returns the URLs of the `top` results."""
    if not credentials.get("api_key"):
        raise PermissionError("the search-api block has no `api_key` secret")
    time.sleep(0.3)  # the round trip to the search API
    slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")
    return [f"https://example.org/{slug}/{i}" for i in range(1, top + 1)]


@compute(cost=1.0)
def keyword_density(urls: list[str], keywords: list[str], words: int = 300000) -> dict[str, float]:
    """Analysis script 1: crawl `urls` and compute each keyword's density (per 1000 words)."""
    counts = {k.lower(): 0 for k in keywords}
    total = 0
    for url in urls:
        for w in _crawl(url, words):
            total += 1
            if w in counts:
                counts[w] += 1
    return {k: round(1000.0 * c / max(total, 1), 2) for k, c in counts.items()}


@compute(cost=1.0)
def readability(urls: list[str], words: int = 300000) -> dict[str, float]:
    """Analysis script 2: crawl `urls` and score readability (mean word length, sentence length)."""
    letters = sentences = n = 0
    for url in urls:
        for i, w in enumerate(_crawl(url, words)):
            n += 1
            letters += len(w)
            if i % 17 == 16:
                sentences += 1
    mean_word = letters / max(n, 1)
    mean_sentence = n / max(sentences, 1)
    score = 206.835 - 1.015 * mean_sentence - 84.6 * (mean_word / 3.0)  # Flesch-like
    return {"mean_word_length": round(mean_word, 2), "mean_sentence_length": round(mean_sentence, 2), "score": round(score, 1)}


toolbox = Toolbox(search, keyword_density, readability, chatbot)
