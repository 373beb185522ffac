"""Caching of pure calls through Prefect's own machinery (a cache policy and persisted results).

A `cache=True` function's compiled task gets `CallCache` as its Prefect cache policy and
persists its result, so a later call with the same key ends `Cached` without running. What
the key holds, where results are stored, how to clear them: README.md, "Remember: cached
calls"; the probe that lets a cached compute call start without a slot: CONTRIBUTING.md,
"caching.py".
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from prefect.cache_policies import CachePolicy
from prefect.utilities.hashing import hash_objects

from prefect_llmorch.functions import FunctionSpec
from prefect_llmorch.plan.evaluate import resolve
from prefect_llmorch.plan.model import Call

__all__ = ["CallCache", "NotCacheable", "cache_probe", "function_version", "task_cache_options"]

class NotCacheable(TypeError):
    """A `cache=True` call whose arguments cannot be hashed into a cache key."""


def function_version(spec: FunctionSpec) -> str:
    """The declared `version`, else a hash of the function's source (or its bytecode)."""
    if spec.version:
        return str(spec.version)
    fn = spec.fn
    if fn is None:
        return "builtin"
    try:
        text = inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = repr((getattr(code, "co_code", b""), getattr(code, "co_consts", ()))) if code else repr(fn)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class CallCache(CachePolicy):
    """Prefect cache policy of one compiled call: key = function, version, resolved arguments.

    `inputs` is the task's parameters (`call_text`, `inputs` = upstream results by call id);
    the call's arguments are resolved from them the way the task body resolves them.
    """

    call: Optional[Call] = None
    function: str = ""
    version: str = ""

    def compute_key(
        self,
        task_ctx: Any,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> Optional[str]:
        if self.call is None:
            return None
        args, call_kwargs = resolve(self.call, (inputs or {}).get("inputs") or {})
        key = hash_objects(self.function, self.version, list(args), call_kwargs, raise_on_failure=False)
        if key is None:
            raise NotCacheable(
                f"{self.call.id}: {self.function}() is declared cache=True but its arguments cannot be hashed "
                f"(neither JSON nor cloudpickle); declare it without cache=True"
            )
        return f"llmorch-{self.function}-{key}"


def task_cache_options(spec: FunctionSpec, call: Call, *, enabled: bool = True) -> dict[str, Any]:
    """Keyword arguments for `prefect.Task(...)`: a `CallCache` and persisted results when
    the function is `cache=True` (and caching is enabled for this run), else no caching."""
    from prefect.cache_policies import NO_CACHE

    if not (enabled and spec.cache and not spec.effects):
        return {"cache_policy": NO_CACHE, "persist_result": False}
    return {
        "cache_policy": CallCache(call=call, function=spec.name, version=function_version(spec)),
        "persist_result": True,
        "cache_expiration": spec.cache_expiration,  # a timedelta or None (`FunctionSpec` checks it)
    }


def cache_probe(task: Any) -> Callable[[Mapping[str, Any]], bool]:
    """`probe(parameters)`: whether Prefect's engine will answer this task run from its cache.

    `parameters` are the task's submitted parameters (`inputs`: upstream futures, done by
    the time the runner asks). Any doubt (an input that failed, a key that cannot be made,
    `refresh_cache`, a store that cannot be read) is a miss: the call takes its processor
    as any other and Prefect's engine decides as usual."""

    def probe(parameters: Mapping[str, Any]) -> bool:
        from prefect.results import get_result_store
        from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

        policy = task.cache_policy
        refresh = task.refresh_cache if task.refresh_cache is not None else PREFECT_TASKS_REFRESH_CACHE.value()
        if not isinstance(policy, CallCache) or refresh:
            return False
        try:
            upstream = parameters.get("inputs") or {}
            inputs = {cid: fut.result(raise_on_failure=True) for cid, fut in upstream.items()}
            key = policy.compute_key(None, {"inputs": inputs}, {})
            return key is not None and bool(get_result_store().update_for_task(task).exists(key))
        except Exception:
            return False

    return probe
