"""What of the submitting Prefect context a compute task's function sees in its worker process.

Prefect's runners run a task's function inside the context it was submitted from, so
`with prefect.tags("a", "b"): t.submit()` gives the function `TagsContext` tags {"a", "b"}
(ThreadPoolTaskRunner copies the context to its thread; ProcessPoolTaskRunner serializes it
to its process). A plain `@task(tags={"compute"})` on `LLMOrchTaskRunner` runs its function
in a worker process, outside the flow run; `call_with_tags` carries the tags there.

Only the tags travel: the worker has no flow run or task run context (no run logger, no
task runner to submit to: see README, "Your own functions"). Prefect is imported in the
worker only when there are tags to enter (a task's module imports it anyway).
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["call_with_tags"]


def call_with_tags(current_tags: tuple[str, ...], fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run `fn(*args, **kwargs)` inside `prefect.tags(*current_tags)`.

    Runs in the worker process. `fn` travels as an argument, not inside a closure, so the
    pool sees it and sends a function of `__main__` by value (`workers._dumps`).
    """
    from prefect.context import tags

    with tags(*current_tags):
        return fn(*args, **kwargs)
