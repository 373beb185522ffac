"""Tests for `prefect_llmorch.engine.call_context`: the submitting context's tags, in a worker."""

from __future__ import annotations

from prefect.context import TagsContext, tags

from prefect_llmorch.engine.call_context import call_with_tags
from prefect_llmorch.procs.workers import WorkerPool


def seen_tags(*args: object, **kwargs: object) -> tuple[set[str], tuple[object, ...], dict[str, object]]:
    return set(TagsContext.get().current_tags), args, kwargs


def test_the_function_sees_the_tags_and_its_own_arguments_even_named_like_ours() -> None:
    with tags("outer"):  # added to, as `prefect.tags` nests; a worker starts with none
        assert call_with_tags(("a", "b"), seen_tags, 1, fn=2, current_tags=3) == (
            {"outer", "a", "b"}, (1,), {"fn": 2, "current_tags": 3}
        )
    assert TagsContext.get().current_tags == set()  # entered for the call only


def test_in_a_worker_process_the_tags_reach_the_function() -> None:
    with WorkerPool(1) as pool:
        assert pool.run("tags", call_with_tags, (("tag1", "tag2"), seen_tags, 7)).value == ({"tag1", "tag2"}, (7,), {})
