"""Tool credentials from Prefect blocks, loaded for the functions a plan calls.

A function declares the `ToolCredentials` block it needs:

    @inout(credentials="search-api")
    def search(query: str, credentials: dict[str, str]) -> str: ...

The flows load each block a plan needs once, in the flow process, with
`ToolCredentials.load(name).reveal()`, and the compiler hands the revealed settings to the
function at call time (in its thread, or pickled over the pipe to a compute worker
process). They never go through task parameters, so they are not stored on the server,
logged or shown in the UI.
"""

from __future__ import annotations

import threading
from typing import Iterable, Iterator, Mapping

from prefect_llmorch.functions import Toolbox
from prefect_llmorch.plan.model import Call

__all__ = ["CredentialStore", "MissingCredentials", "how_to_create"]


class MissingCredentials(LookupError):
    """A function needs a `ToolCredentials` block that does not exist (or cannot be read)."""

    def __init__(self, block: str, functions: Iterable[str] = (), reason: str = "") -> None:
        self.block = block
        self.functions = sorted(set(functions))
        self.reason = reason
        super().__init__(block, self.functions, reason)

    def __str__(self) -> str:
        users = f" (needed by {', '.join(self.functions)})" if self.functions else ""
        why = f": {self.reason}" if self.reason else ""
        return f"tool credentials block {self.block!r}{users} could not be loaded{why}. {how_to_create(self.block)}"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (MissingCredentials, (self.block, self.functions, self.reason))


def how_to_create(block: str) -> str:
    env = "LLMORCH_" + block.upper().replace("-", "_").replace(" ", "_") + "_KEY"
    return (
        f"Create it on this Prefect server: in the UI (Blocks > + > LLMOrch Tool Credentials, "
        f"name {block!r}), in Python with "
        f"`ToolCredentials(secrets={{'api_key': '...'}}).save({block!r})`, or with "
        f"`{env}=... python blocks/register.py` (after `prefect block register -m prefect_llmorch.blocks`)."
    )


class CredentialStore(Mapping[str, Mapping[str, str]]):
    """Block name -> revealed settings, loaded on first use and kept for the flow run.

    Give it to `Compiler(secrets=...)`. `require(calls)` loads, in the flow's thread,
    every block the calls' functions declare, so a missing block fails the run before
    anything starts; a block first needed later (a repaired call swapped to another
    function) is loaded when the call runs. `preset` entries are used as given (tests,
    or secrets that do not live in blocks).
    """

    def __init__(self, toolbox: Toolbox, preset: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.toolbox = toolbox
        self._loaded: dict[str, dict[str, str]] = {k: dict(v) for k, v in (preset or {}).items()}
        self._lock = threading.Lock()

    def users(self, block: str) -> list[str]:
        return sorted(name for name, spec in self.toolbox.items() if spec.credentials == block)

    def require(self, calls: Iterable[Call]) -> None:
        """Load the blocks of every function the calls use (raises `MissingCredentials`)."""
        for call in calls:
            spec = self.toolbox.get(call.function)
            if spec is not None and spec.credentials:
                self[spec.credentials]

    def __getitem__(self, block: str) -> Mapping[str, str]:
        with self._lock:
            if block in self._loaded:
                return self._loaded[block]
        revealed = self._load(block)
        with self._lock:
            return self._loaded.setdefault(block, revealed)

    def __contains__(self, block: object) -> bool:
        # The compiler asks `name in secrets` before it reads: load here, so a missing
        # block fails the call with `MissingCredentials` (what to create), not a bare miss.
        if not isinstance(block, str):
            return False
        self[block]
        return True

    def _load(self, block: str) -> dict[str, str]:
        from prefect_llmorch.blocks import ToolCredentials

        try:
            return ToolCredentials.load(block).reveal()
        except ValueError as exc:  # Prefect: "Unable to find block document named ..."
            raise MissingCredentials(block, self.users(block)) from exc
        except Exception as exc:  # unreachable server, wrong block type, ...
            raise MissingCredentials(block, self.users(block), f"{type(exc).__name__}: {exc}") from exc

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._loaded))

    def __len__(self) -> int:
        with self._lock:
            return len(self._loaded)

    def __repr__(self) -> str:  # never the values
        return f"CredentialStore(loaded={sorted(self)})"
