"""The crash ledger: which process of this machine holds which global-concurrency lease.

A killed process cannot give its slots back, so the guard (`engine/guard.py`) writes each
lease here before it takes the slots, and the next runner clears the leases whose process (or
embedded server) is gone. One JSON file in PREFECT_HOME, `llmorch-leases.json`, shared by every
process of that PREFECT_HOME and locked (`fcntl.flock`) while one of them reads or changes it.
An entry is a dict:

- `limit`: the global concurrency limit's name; `slots`: how many it holds;
- `lease`: the lease's id, None while it is an intent (written before the slots are taken;
  `settle` gives it its lease id once they are held); `intent`: the intent's id;
- `api`: the API URL the lease was taken from; `server`: which server answered there
  (`host.server.server_instance`: `URL#pid=N` for an embedded server);
- `pid`, `started`: the holding process and its start time (`process_start`: a reused pid is
  another process); `t`: when it was written (epoch seconds).

The ledger is a record: a failure to read or write it is logged at debug level and the guard
goes on (leases still expire on their own), except `change`, which raises so that no slot is
taken unrecorded.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

__all__ = [
    "ledger_path", "locked", "read", "add", "change", "settle", "forget_intent", "remove",
    "process_start", "alive", "server_alive",
]

logger = logging.getLogger("prefect_llmorch.storage.leases")


def ledger_path() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / "llmorch-leases.json"


@contextmanager
def locked() -> Iterator[list[dict[str, Any]]]:
    """The ledger's entries, locked against other processes while the block runs."""
    import fcntl

    path = ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        try:
            entries = json.loads(f.read() or "[]")
        except ValueError:  # a torn write: start over (leases still expire on their own)
            entries = []
        before = [dict(e) for e in entries]  # (a change may edit an entry in place)
        yield entries
        if entries != before:
            f.seek(0)
            f.truncate()
            f.write(json.dumps(entries))


def read() -> list[dict[str, Any]]:
    try:
        with locked() as entries:
            return list(entries)
    except OSError as exc:
        logger.debug("lease ledger: %s", exc)
        return []


def add(entry: dict[str, Any]) -> None:
    try:
        with locked() as entries:
            entries.append(entry)
    except OSError as exc:
        logger.debug("lease ledger: %s", exc)


def change(edit: Callable[[list[dict[str, Any]]], None]) -> None:
    """Change the ledger's entries in place, locked; raises `OSError` when it cannot be
    written (no slot is taken then: the guard's `_acquire` records before it takes)."""
    with locked() as entries:
        edit(entries)


def settle(intent: str, lease_id: str) -> None:
    """The intent `intent` took its slots: record the lease's id in its entry."""
    def record(entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            if entry.get("intent") == intent:
                entry["lease"] = lease_id

    try:
        change(record)
    except OSError as exc:  # the intent stays: it still explains the slots while we live
        logger.debug("lease ledger: %s", exc)


def forget_intent(intent: Any) -> None:
    try:
        change(lambda entries: entries.__setitem__(
            slice(None), [e for e in entries if not (e.get("intent") == intent and e.get("lease") is None)]))
    except OSError as exc:
        logger.debug("lease ledger: %s", exc)


def remove(lease_id: Any) -> None:
    try:
        with locked() as entries:
            entries[:] = [e for e in entries if e.get("lease") is None or e.get("lease") != str(lease_id)]
    except OSError as exc:
        logger.debug("lease ledger: %s", exc)


def process_start(pid: int | None = None) -> float:
    import psutil

    try:
        return psutil.Process(pid or os.getpid()).create_time()
    except psutil.Error:
        return 0.0


def alive(entry: dict[str, Any]) -> bool:
    """Whether the process that took a lease still runs (a reused pid is another process)."""
    import psutil

    pid = int(entry.get("pid") or 0)
    if pid <= 0 or not psutil.pid_exists(pid):
        return False
    started = float(entry.get("started") or 0.0)
    return not started or abs(process_start(pid) - started) < 1.0


def server_alive(entry: Mapping[str, Any]) -> bool:
    """Whether the embedded server that granted an entry's lease still runs (entries of a
    server at PREFECT_API_URL name no pid: alive as far as we know). A process may outlive
    its embedded server (killed under it): its leases died with the server."""
    import psutil

    _, sep, pid = str(entry.get("server") or "").rpartition("#pid=")
    try:
        return not sep or psutil.pid_exists(int(pid))
    except ValueError:
        return True
