"""The planner's first LLM request, sent before the flow run exists.

Creating a flow run, entering its task runner and submitting the planner task take Prefect
tens to hundreds of milliseconds, all spent waiting on the API; the LLM could be writing the
plan meanwhile. `PlanningAhead` is an `LLMClient` whose first planner request (exactly what
`planning.plan_query` will ask first: the same messages, temperature and response format)
is sent on a thread at once; when the planner then asks for that stream, it gets the one
already open (its chunks waiting in the socket). Any other request, and a first request that
differs, goes to the endpoint as usual, so the answer is never one that was not asked for.

    ahead = PlanningAhead(client, query, toolbox, mode=None)   # the request leaves now
    plan_query(query, toolbox, ahead)                          # takes the open stream
    ahead.close()                                              # an untaken stream is closed

No Prefect here (the LLM side is plain HTTP).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any, Sequence

from prefect_llmorch.functions import Toolbox
from prefect_llmorch.llm.client import PLANNER_MODES, CompletionStream, LLMClient, Message
from prefect_llmorch.llm.planning import build_system_prompt, plan_messages
from prefect_llmorch.plan.schema import response_format as plan_response_format

__all__ = ["PlanningAhead"]


class PlanningAhead(LLMClient):
    """`client`, with the planner's first request for `query` already sent.

    Shares `client`'s settings and connection pool (`openai`); pickles as a plain client.

    Args:
        client: the endpoint.
        query: the question the planner will plan.
        toolbox: its toolbox (the system prompt lists its functions).
        mode: "text", "json", or None (the client's `planner` setting), as for `plan_query`.
        temperature: the first round's temperature (`plan_query`'s default: 0.0).
        join: whether the joiner follows the plan (`plan_query(join=)`: the system prompt says so).
    """

    def __init__(self, client: LLMClient, query: str, toolbox: Toolbox, mode: str | None = None,
                 temperature: float = 0.0, *, join: bool = False) -> None:
        self.__dict__.update(client.__getstate__())  # the same settings (not the pool: `openai`)
        self._client_lock = threading.Lock()
        self._origin = client
        mode = mode or client.planner or "text"
        if mode not in PLANNER_MODES:
            raise ValueError(f"mode must be one of {', '.join(PLANNER_MODES)}, got {mode!r}")
        self._messages = plan_messages(query, toolbox, system=build_system_prompt(toolbox, mode, join=join), mode=mode)
        self._temperature = temperature
        self._format = plan_response_format(toolbox) if mode == "json" else None
        self._taken = False
        self._lock = threading.Lock()
        self._ahead: concurrent.futures.Future[CompletionStream] = concurrent.futures.Future()
        #: `time.time()` just before the request was sent: where an ask's latency counts from.
        self.sent_at = time.time()
        threading.Thread(target=self._send, daemon=True, name="llmorch-plan-ahead").start()

    def _send(self) -> None:
        try:
            self._ahead.set_result(self._origin.stream(self._messages, self._temperature, response_format=self._format))
        except BaseException as exc:  # an LLMError reaches the planner when it takes the stream
            self._ahead.set_exception(exc)

    @property
    def openai(self) -> Any:
        """The original client's `openai` client: one connection pool."""
        return self._origin.openai

    def close(self) -> None:
        """Close the stream sent ahead if the planner never took it (the original client's
        pool stays open: it is the caller's). Safe to call several times."""
        with self._lock:
            taken, self._taken = self._taken, True
        if not taken:
            self._ahead.add_done_callback(lambda f: f.exception() is None and f.result().close())

    def stream(self, messages: Sequence[Message], temperature: float | None = None,
               *, response_format: dict[str, Any] | None = None) -> CompletionStream:
        """The stream sent ahead when this is that request (once), else a new one."""
        with self._lock:
            take = not self._taken and (list(messages), temperature, response_format) == (
                self._messages, self._temperature, self._format)
            self._taken = self._taken or take
        if take:
            return self._ahead.result()  # raises the request's LLMError, as asking now would
        return self._origin.stream(messages, temperature, response_format=response_format)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_plain, (self._origin,))

    def __repr__(self) -> str:  # the client's: a replayed planner's cache key (`replay_key`) must not differ
        return repr(self._origin)


def _plain(client: LLMClient) -> LLMClient:
    return client
