"""The runner's Prefect API thread: the global limits' slots.

`GlobalLimit` makes every Prefect API call of an `LLMOrchTaskRunner` itself, one at a time,
on one thread (a SQLite server answers 503 "database is locked" to bursts of writes):

- **Slots of the machine-wide guard.** A Prefect global concurrency limit (`llmorch-processors`
  by default, created with limit P if absent) is held one slot per processor the flow run
  uses. Slots are taken ahead of need, when the runner starts (while the planner still
  writes), in one lease where possible, renewed while held, and given back when no compute
  call is left, so no call pays the limit's round trip on its critical path and two flow runs
  on one machine never run more than P compute calls together. `slots` is what the runner
  may use; with no limit it is P. The guard is never dropped silently: a transient
  failure (503, "database is locked", a dropped connection) is retried with backoff for up to
  `GUARD_PATIENCE_SECONDS`; a limit that cannot be had (deleted, unreachable that long) sets
  `failed`, and the runner fails its compute calls with that message instead of running them
  unguarded (`guard="local"` on the runner opts out of the limit).
- **Slots always come back.** Leases expire unless renewed (60 s); the runner gives its
  leases back on every way out it lives through; and since a killed process cannot, each
  lease is also written to a small ledger in PREFECT_HOME (`llmorch-leases.json`, pid and API
  URL): a runner starting finds leases whose process is gone and clears them (by lease when
  the server still knows it; by decrementing the slots when the lease died with its
  ephemeral server, which forgets leases but keeps the slots in its database). A run that
  waits for slots other flow runs hold says so, once.
- **Slots passed on within a process.** The processors' slots a runner gives back are kept
  a few seconds (`LLMORCH_KEEP_SLOTS_SECONDS`, 5) for the next runner of this process, which
  takes them without a lease write (on a SQLite server still writing the previous run's
  events that write waited seconds); `take_ahead` takes them for `llmorch run` while Prefect
  creates the flow run. Kept leases are still in the ledger, and go back when their time is
  up or at exit. A back-off (below) gives its slots back for real.
- **One limit per resource class.** Beside the processors' limit, each resource capacity
  of the runner (`resources=`, `gpus=`) is guarded by its own global concurrency limit,
  `llmorch-<resource>` (`llmorch-gpu_mem_gb-<device>` per GPU device; sizes and names from
  `schedule.resources.global_limits`), created with the capacity if absent, held in leases
  the same way (`configure` names them, `adjust(target, busy, name)` sizes each), cleared
  the same way from the ledger when their holder is gone. A call takes whole slots:
  `limit_slots` of its demand (2 of `llmorch-processors` for a call needing 2 processors).
  Two flow runs could each hold part of what the other's waiting calls need (one all the
  processors, the other the GPU memory; or one processor slot each for 2-processor calls),
  and wait forever. So a runner never holds and waits: when none of its calls runs, some
  wait, a limit they need is held by others (`blocked`) and it holds idle slots, it gives
  them back and takes none for a random 0.5-2 s (`back_off`); one of the runs gets all it
  needs first.
- **No tag-limit look-ups.** The task runs this project creates carry no Prefect tags
  (engine/compiler.py), so Prefect's engine never asks the API for tag slots for them: that
  request is a write, which a busy SQLite server refused with 503 and crashed the call. A
  user's own tagged task on our runner asks, as on any Prefect runner.
"""

from __future__ import annotations

import atexit
import contextvars
import itertools
import json
import logging
import os
import queue
import random
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from prefect_llmorch.host.server import server_key

logger = logging.getLogger("prefect_llmorch.engine.leases")

#: How long to wait before asking again for a slot of a full global limit.
_FULL_LIMIT_RETRY_SECONDS = 0.5

#: Lease of the global limit's slots; renewed every third of it while held.
_LEASE_SECONDS = 60.0



#: Slots of the processors' limit a runner gives back at its end are kept this long for the
#: next runner of this process (`LLMORCH_KEEP_SLOTS_SECONDS`; 0: give them back at once). Back
#: to back runs in a warm process then start their first compute call without a lease write,
#: which a SQLite server still writing the previous run's events held for seconds.
KEEP_SLOTS_SECONDS = 5.0


def _keep_seconds() -> float:
    try:
        return max(float(os.environ.get("LLMORCH_KEEP_SLOTS_SECONDS", KEEP_SLOTS_SECONDS)), 0.0)
    except ValueError:
        return KEEP_SLOTS_SECONDS


@dataclass
class _Kept:
    lease: Any
    slots: int
    renewed: float  # monotonic time of its last renewal
    url: str | None  # the API it was taken from (None: the default), to give it back


#: (API server, limit) -> leases kept for this process's next runner.
_KEPT: dict[tuple[str, str], list[_Kept]] = {}
#: (API server, limit) -> (monotonic time, size): the limits this process read or created.
_KNOWN_LIMITS: dict[tuple[str, str], tuple[float, int]] = {}
_kept_lock = threading.Lock()


def _keep(server: str, name: str, leases: list[tuple[Any, int, float]], seconds: float | None = None) -> None:
    """Keep these leases for the next runner of this process, for `seconds` (default
    `_keep_seconds()`); give back what none takes."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    kept = [_Kept(lease, n, renewed, url) for lease, n, renewed in leases]
    with _kept_lock:
        if not _KEPT:
            atexit.register(_give_back_all_kept)
        _KEPT.setdefault((server, name), []).extend(kept)
    for k in kept:
        timer = threading.Timer(_keep_seconds() if seconds is None else seconds, _give_back_kept, args=(server, name, k.lease))
        timer.daemon = True
        timer.start()


def _adopt(server: str, name: str, most: int) -> list[_Kept]:
    """Kept leases of `name` (at most `most` slots in all) for a runner that needs slots."""
    taken: list[_Kept] = []
    with _kept_lock:
        kept = _KEPT.get((server, name), [])
        for k in list(kept):
            if k.slots <= most and time.monotonic() - k.renewed < _LEASE_SECONDS * 2 / 3:
                kept.remove(k)
                taken.append(k)
                most -= k.slots
    return taken


def _give_back_kept(server: str, name: str, lease: Any | None = None, patience: float = 3.0) -> None:
    """Give back a kept lease (or all of them) that no runner took."""
    with _kept_lock:
        kept = _KEPT.get((server, name), [])
        mine = [k for k in kept if lease is None or k.lease == lease]
        for k in mine:
            kept.remove(k)
    for k in mine:  # in a context of its own: none of a finished flow run's (closed) clients
        contextvars.Context().run(_release_lease, k.lease, k.url, patience)


def _release_lease(lease: Any, url: str | None, patience: float) -> None:
    from contextlib import nullcontext

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: url}) if url else nullcontext():
            with get_client(sync_client=True) as client:
                _patient(client.release_concurrency_slots_with_lease, lease, patience=patience)
        _ledger_remove(lease)
    except BaseException as exc:  # it expires on its own; the ledger entry then clears it
        logger.debug("giving back a kept lease: %s", exc)


#: (API server, limit) -> the `take_ahead` thread of this process still taking its slots.
_TAKING: dict[tuple[str, str], threading.Thread] = {}


def kept_slots(name: str) -> int:
    """Slots of limit `name` this process keeps for its next runner (fresh enough to be taken)."""
    now = time.monotonic()
    with _kept_lock:
        return sum(k.slots for k in _KEPT.get((server_key(), name), []) if now - k.renewed < _LEASE_SECONDS * 2 / 3)


def take_ahead_unless_kept(name: str, processors: int) -> threading.Thread | None:
    """`take_ahead` for a warm process's next run (`run_plan` calls it while Prefect creates
    the flow run) when it keeps no slots of `name` any more: runs further apart than
    `LLMORCH_KEEP_SLOTS_SECONDS` then do not wait for their lease write at the first compute
    call. Nothing when keeping is off (`LLMORCH_KEEP_SLOTS_SECONDS=0`), when slots are kept,
    or while another take-ahead of the limit is under way."""
    if _keep_seconds() <= 0 or kept_slots(name) > 0:
        return None
    return take_ahead(name, processors, keep_for=max(_keep_seconds(), 10.0))


def take_ahead(name: str, processors: int, keep_for: float = 30.0, wait: float = 10.0) -> threading.Thread:
    """Take up to `processors` slots of limit `name` now, on a thread of its own, and keep
    them (up to `keep_for` seconds) for this process's next runner: `llmorch run` calls it
    while Prefect creates the flow run, so the first compute call does not wait for the lease
    write (on a fresh ephemeral server it waited ~2.4 s). Creating the limit, clearing slots
    of dead holders happen here too. Best effort: on any failure the
    runner takes its slots itself, as it would have."""

    def take() -> None:
        got = threading.Event()
        limit = GlobalLimit(name, lambda: processors, got.set, lambda: False)
        limit.keep_for = keep_for
        limit.ahead = True
        deadline = time.monotonic() + wait
        with ExitStack() as stack:
            limit.start(stack)
            while limit.limit_size is None and not limit.failed and time.monotonic() < deadline:
                got.wait(0.05)
                got.clear()
            limit.adjust(processors, 0)
            while not limit.failed and time.monotonic() < deadline:
                if limit.held >= min(processors, limit.limit_size or processors):
                    break
                got.wait(0.05)
                got.clear()

    key = (server_key(), name)

    def take_once() -> None:
        try:
            take()
        finally:
            with _kept_lock:
                if _TAKING.get(key) is threading.current_thread():
                    del _TAKING[key]

    with _kept_lock:
        running = _TAKING.get(key)
        if running is not None and running.is_alive():
            return running  # one at a time: a second would wait for the first's slots
        thread = _TAKING[key] = threading.Thread(target=take_once, daemon=True, name="llmorch-take-ahead")
    thread.start()
    return thread


def _give_back_all_kept() -> None:
    """At exit. Registered with the first kept lease: after Prefect registered the stop of an
    ephemeral server it started, so this runs first, while that server still answers."""
    for server, name in list(_KEPT):
        _give_back_kept(server, name, patience=0.0)  # one try: exit is not held up


#: How long a transient API failure (503, "database is locked", a dropped connection) is
#: retried, with backoff, before the runner gives up on the guard and fails its compute calls.
GUARD_PATIENCE_SECONDS = 60.0

@dataclass
class _Guard:
    """The slots this runner holds of one global concurrency limit."""

    name: str
    capacity: int | None  # the size to create it with (None: P, read when it is prepared)
    held: list[tuple[Any, int]] = field(default_factory=list)  # (lease id, slots)
    slots: int = 0
    target: int = 0
    busy: int = 0
    acquiring: int = 0
    size: int | None = None  # the limit's size, once read
    told_waiting: bool = False
    blocked: bool = False  # the last request found the slots held by other flow runs


class GlobalLimit:
    """The global limits' slots, kept by one API thread.

    Args:
        name: the processors' global concurrency limit; None: no machine-wide guard at all
            (`slots` is P, `configure` adds nothing).
        processors: returns P now (a deployment may lower it before calls are submitted).
        wake: called (from this thread) when more slots are held: the runner starts what may
            start now.
        active: returns whether the runner has unfinished work.
    """

    def __init__(
        self,
        name: str | None,
        processors: Callable[[], int],
        wake: Callable[[], None],
        active: Callable[[], bool],
    ) -> None:
        self.name = name
        self._processors = processors
        self._wake = wake
        self._active = active
        self._lock = threading.RLock()
        self._seq = itertools.count()
        self._jobs: "queue.PriorityQueue[tuple[tuple[int, ...], int, str, Any]]" = queue.PriorityQueue()
        self._guards: dict[str, _Guard] = {}
        self._lease_renewed: dict[Any, float] = {}
        self._client: Any = None  # this thread's own Prefect client
        self._holder_id: Any = None
        self.failures: dict[str, str] = {}  # limit -> why it cannot be had: calls needing it fail with it
        self._stopping = False
        self.keep_for: float | None = None  # how long slots it holds at stop are kept (None: the default)
        self.ahead = False  # `take_ahead`'s own: it never waits for a take-ahead
        self._paused_until = 0.0  # backing off: no slot is taken before this (monotonic)
        self._server = server_key()
        if name:
            self._guards[name] = _Guard(name, None)

    # -- what the runner asks ---------------------------------------------------------
    @property
    def failed(self) -> str | None:
        """Why some limit cannot be had (the first one), or None."""
        with self._lock:
            return next(iter(self.failures.values()), None)

    @property
    def slots(self) -> int:
        """Processors the runner may use now: the processors' limit slots held (P without a limit)."""
        if not self.name:
            return self._processors()
        return self._guards[self.name].slots

    @property
    def held(self) -> int:
        """Slots of the processors' limit held right now (0 without a limit)."""
        return self._guards[self.name].slots if self.name else 0

    @property
    def limit_size(self) -> int | None:
        """The processors' limit's size, once read."""
        return self._guards[self.name].size if self.name else None

    @property
    def guarded(self) -> bool:
        """Whether limits guard this runner machine-wide."""
        return bool(self.name)

    def names(self) -> list[str]:
        """The limits guarded, the processors' first."""
        with self._lock:
            return list(self._guards)

    def held_of(self, name: str) -> int | None:
        """Slots of limit `name` held now; None when `name` is not guarded."""
        with self._lock:
            guard = self._guards.get(name)
            return None if guard is None else guard.slots

    def size_of(self, name: str) -> int | None:
        """Limit `name`'s size once read (None before, or when it is not guarded)."""
        with self._lock:
            guard = self._guards.get(name)
            return None if guard is None else guard.size

    def failure_of(self, names: Iterable[str]) -> str | None:
        """Why one of these limits cannot be had, or None."""
        with self._lock:
            return next((self.failures[n] for n in names if n in self.failures), None)

    def blocked(self, names: Iterable[str]) -> bool:
        """Whether one of these limits' last requests found its slots held by other flow runs."""
        with self._lock:
            return any(self._guards[n].blocked for n in names if n in self._guards)

    def back_off(self) -> None:
        """Give back every idle slot (none of the runner's calls holds it: `busy`) and take
        none for a random 0.5-2 s, then take the targets again (see the module docstring).
        Called by a runner whose waiting calls cannot start while it holds slots others need."""
        with self._lock:
            now = time.monotonic()
            if self._stopping or now < self._paused_until or not any(g.slots > g.busy for g in self._guards.values()):
                return  # nothing idle to give back: keep asking
            pause = random.uniform(0.5, 2.0)
            self._paused_until = now + pause
            released = 0
            for guard in self._guards.values():
                # What blocked us is re-learned by the first request after the pause. Kept, it
                # made the runner back off again as soon as its first slot came back, before
                # the blocked limit was asked again: a livelock (tests/test_leases.py).
                guard.blocked = False
                while guard.slots > guard.busy:
                    lease = next((h for h in reversed(guard.held) if h[1] <= guard.slots - guard.busy), None)
                    if lease is None:
                        break
                    guard.held.remove(lease)
                    guard.slots -= lease[1]
                    released += lease[1]
                    self._job("release", lease[0])
        if released:
            logger.info("gave back %s idle slot(s) for %.1f s: other flow runs hold what the waiting calls need", released, pause)
        resume = threading.Timer(pause, self._resume)
        resume.daemon = True
        resume.start()

    def _resume(self) -> None:
        with self._lock:
            self._paused_until = 0.0  # (a timer may fire a hair before the pause's end)
            again = [(g.target, g.busy, g.name) for g in self._guards.values()]
        for target, busy, name in again:
            self.adjust(target, busy, name)

    def configure(self, limits: Mapping[str, int]) -> None:
        """Guard these limits too (name -> the size to create it with); names already
        guarded keep their state. Nothing without a machine-wide guard (`name` None)."""
        if not self.name:
            return
        with self._lock:
            new = [n for n in limits if n not in self._guards]
            for n in new:
                self._guards[n] = _Guard(n, int(limits[n]))
        for n in new:
            self._job("prepare", n)

    def start(self, stack: ExitStack) -> None:
        """Start the API thread; `stack` stops it (giving every slot back) when closed."""
        from prefect.context import FlowRunContext

        run_ctx = FlowRunContext.get()
        if run_ctx is not None and run_ctx.flow_run is not None:
            self._holder_id = run_ctx.flow_run.id  # the UI shows which flow run holds the slots
        ctx = contextvars.copy_context()
        thread = threading.Thread(target=ctx.run, args=(self._loop,), daemon=True, name="llmorch-api")
        thread.start()
        stack.callback(thread.join, 15)
        stack.callback(self._job, "stop", None)  # the thread gives every slot back, then ends
        if self.name:
            self._job("prepare", self.name)

    def adjust(self, target: int, busy: int, name: str | None = None) -> None:
        """Hold `target` slots of limit `name` (default: the processors'): take missing ones
        (one acquisition in flight at a time) and give back idle leases beyond the target
        (`busy` slots are in use). Off the critical path: the API calls happen on this
        object's thread."""
        name = name or self.name
        if not name:
            return
        with self._lock:
            guard = self._guards.get(name)
            if guard is None:
                return
            target = min(target, guard.size if guard.size is not None else target)  # an existing smaller limit
            guard.target, guard.busy = target, busy
            if name in self.failures or self._stopping:
                return
            missing = target - guard.slots - guard.acquiring
            adopted = self._adopt_kept(guard, missing) if missing > 0 and guard.acquiring == 0 else 0
            missing -= adopted
            if missing > 0 and guard.acquiring == 0 and time.monotonic() >= self._paused_until:
                guard.acquiring = missing
                self._job("acquire", (name, missing))
            while guard.slots > target:
                spare = min(guard.slots - target, guard.slots - busy)
                lease = next((held for held in reversed(guard.held) if held[1] <= spare), None)
                if lease is None:
                    break
                guard.held.remove(lease)
                guard.slots -= lease[1]
                if name == self.name and _keep_seconds() > 0:
                    self._job("keep", lease)  # for this process's next runner, for a few seconds
                else:
                    self._job("release", lease[0])
        if adopted:
            self._wake()  # the runner starts what these slots allow

    def _adopt_kept(self, guard: "_Guard", most: int) -> int:
        """Hold slots of the processors' limit that this process's previous runner kept (at
        most `most`), here, in the caller's thread: no API call, so a warm process's first
        compute call does not wait for the API thread (its start and its first requests,
        behind the flow run's own). Returns how many. Called with the lock held."""
        if guard.name != self.name or self._stopping or time.monotonic() < self._paused_until:
            return 0
        adopted = _adopt(self._server, guard.name, most)
        for k in adopted:
            guard.held.append((k.lease, k.slots))
            guard.slots += k.slots
            self._lease_renewed[k.lease] = k.renewed
        if adopted:
            guard.blocked = False
        return sum(k.slots for k in adopted)

    # -- the thread -------------------------------------------------------------------
    def _job(self, op: str, arg: Any) -> None:
        priority = {"stop": (-1,), "prepare": (0,), "release": (0,), "keep": (0,), "acquire": (0,)}[op]
        self._jobs.put((priority, next(self._seq), op, arg))

    def _loop(self) -> None:
        # The client's own retries off once for this thread: `_quick` retries faster, and a
        # settings copy per request cost more flow-process CPU than the request (py-spy).
        with _no_client_retries():
            self._serve()

    def _serve(self) -> None:
        while True:
            try:
                _, _, op, arg = self._jobs.get(timeout=1.0)
            except queue.Empty:
                op = arg = None
            self._renew_leases()
            if op is None:
                continue
            if op == "stop":
                self._stopping = True
                self._drain_releases()
                self._release_all()
                return
            try:
                getattr(self, f"_do_{op}")(arg)
            except BaseException as exc:  # never let the API thread die
                logger.warning("llmorch API call %s failed: %s", op, exc)

    def _drain_releases(self) -> None:
        """At stop: give back leases already queued for release; drop everything else."""
        while True:
            try:
                _, _, op, arg = self._jobs.get_nowait()
            except queue.Empty:
                return
            if op == "keep":
                self._do_keep(arg)
            elif op == "release":
                try:
                    self._do_release(arg)
                except BaseException as exc:  # the lease expires on its own
                    logger.debug("releasing a lease: %s", exc)

    def _do_prepare(self, name: str) -> None:
        """Create limit `name` (with its capacity; P for the processors') if absent, clear
        slots of holders that are gone, then let the runner take slots."""
        guard = self._guards[name]
        known = _KNOWN_LIMITS.get((self._server, name))
        if known is not None and guard.slots > 0 and time.monotonic() - known[0] < _LEASE_SECONDS:
            # Slots the previous runner kept are held already (`_adopt_kept`): the limit
            # exists, and this process read its size moments ago. No API read before calls.
            guard.size = known[1]
            try:
                self._clear_stale(name)
            except BaseException as exc:
                self._give_up(exc, name)
                return
            self._wake()
            return
        try:
            from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
            from prefect.exceptions import ObjectNotFound

            client = self._api()  # also warms this thread's client before the first lease
            capacity = self._processors() if guard.capacity is None else guard.capacity
            try:
                limit = _patient(client.read_global_concurrency_limit_by_name, name)
                guard.size = limit.limit
                if limit.limit < capacity:
                    logger.warning(
                        "global concurrency limit %r has limit %s: this flow run uses at most %s of its %s",
                        name, limit.limit, limit.limit, capacity,
                    )
            except ObjectNotFound:
                try:
                    _patient(
                        client.create_global_concurrency_limit,
                        GlobalConcurrencyLimitCreate(name=name, limit=capacity),  # type: ignore[arg-type]
                    )
                    guard.size = capacity
                except Exception:  # created meanwhile by another flow run
                    guard.size = _patient(client.read_global_concurrency_limit_by_name, name).limit
            _KNOWN_LIMITS[(self._server, name)] = (time.monotonic(), int(guard.size))  # type: ignore[arg-type]
            self._clear_stale(name)
        except BaseException as exc:
            self._give_up(exc, name)
            return
        self._wake()  # the runner recomputes its targets with the limit's size

    def _clear_stale(self, name: str) -> None:
        """Give back the slots of leases of `name` whose process is gone (see the module docstring)."""
        from prefect.exceptions import PrefectHTTPStatusError

        gone = [e for e in _ledger_read() if e.get("limit") == name and not _alive(e)]
        if not gone:
            return
        api = str(self._api().api_url)
        for entry in gone:
            how = "its lease"
            try:
                _quick(self._api().renew_concurrency_lease, entry["lease"], lease_duration=_LEASE_SECONDS)
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code not in (404, 410):
                    raise
                if entry.get("api") == api:
                    how = ""  # this server expired the lease itself: its slots are back already
                else:  # the lease died with the server that granted it; its slots did not
                    how = "its slots (the server that granted the lease is gone)"
                    held_for = max(time.time() - float(entry.get("t") or 0.0), 0.001)
                    _patient(self._api().release_concurrency_slots, [name], int(entry["slots"]), held_for)
            else:
                _patient(self._api().release_concurrency_slots_with_lease, entry["lease"])
            _ledger_remove(entry["lease"])
            if how:
                logger.warning(
                    "global concurrency limit %r: cleared %s slot(s) left by process %s, which is gone (cleared %s)",
                    name, entry["slots"], entry.get("pid"), how,
                )

    def _do_acquire(self, arg: tuple[str, int]) -> None:
        """Take `n` slots of a limit in one lease (one API write); if they are not free
        together (other flow runs hold some), take them one at a time."""
        name, n = arg
        guard = self._guards[name]
        with self._lock:
            guard.acquiring = 0
            need = min(guard.target, guard.size if guard.size is not None else guard.target) - guard.slots
            if self._stopping or name in self.failures or need <= 0 or time.monotonic() < self._paused_until:
                return  # (backing off: `_resume` asks again)
            n = min(n, need)
        if name == self.name:
            taking = None if self.ahead else _TAKING.get((self._server, name))
            if taking is not None and taking.is_alive():
                # This process is taking them ahead for us: no lease of our own. Ask again in a
                # moment, without holding up this thread's other jobs (renewals, releases).
                with self._lock:
                    guard.acquiring = n
                again = threading.Timer(0.05, self._job, args=("acquire", (name, n)))
                again.daemon = True
                again.start()
                return
            adopted = _adopt(self._server, name, n)
            if adopted:  # slots the previous runner of this process kept: no API write
                with self._lock:
                    for k in adopted:
                        guard.held.append((k.lease, k.slots))
                        guard.slots += k.slots
                        self._lease_renewed[k.lease] = k.renewed
                    guard.blocked = False
                    target, busy = guard.target, guard.busy
                self._wake()
                self.adjust(target, busy, name)
                return
        try:
            lease = self._lease_request(name, n)
        except BaseException as exc:  # limit deleted, API down for long: fail, never run unguarded
            self._give_up(exc, name)
            return
        if lease is None:  # not free now (other flow runs hold them): ask again in a moment
            guard.blocked = True
            self._wake()  # the runner may need to back off
            if not guard.told_waiting and guard.slots == 0:
                guard.told_waiting = True
                holders = sorted({int(e.get("pid") or 0) for e in _ledger_read() if e.get("limit") == name and _alive(e)})
                logger.warning(
                    "waiting for a slot of global concurrency limit %r (limit %s): held by %s. "
                    "`prefect gcl inspect %s` shows the limit; slots a crashed run left on another machine "
                    "come back when its lease expires (%.0f s); if nothing should hold them, "
                    "`prefect gcl update %s --active-slots 0` frees them, or run with --no-global-limit",
                    name, guard.size,
                    ("llmorch processes " + ", ".join(map(str, holders))) if holders
                    else "no llmorch process on this machine (another machine, or a Prefect flow of yours)",
                    name, _LEASE_SECONDS, name,
                )
            with self._lock:
                guard.acquiring = 1
            retry = threading.Timer(_FULL_LIMIT_RETRY_SECONDS, self._job, args=("acquire", (name, 1)))
            retry.daemon = True
            retry.start()
            return
        with self._lock:
            guard.blocked = False
            guard.held.append((lease, n))
            guard.slots += n
            target, busy = guard.target, guard.busy
        self._wake()
        self.adjust(target, busy, name)

    def _lease_request(self, name: str, n: int) -> Any:
        """One `increment-with-lease` write for `n` slots of `name`; the lease id, or None
        when the limit has not `n` free slots."""
        from prefect.client.schemas.objects import ConcurrencyLeaseHolder
        from prefect.exceptions import PrefectHTTPStatusError

        client = self._api()
        holder = ConcurrencyLeaseHolder(type="flow_run", id=self._holder_id or uuid.uuid4())
        try:
            response = _patient(
                client.increment_concurrency_slots_with_lease,
                names=[name], slots=n, mode="concurrency",  # type: ignore[list-item]
                lease_duration=_LEASE_SECONDS, holder=holder,
            )
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 423:  # full: the caller tries again later (or slot by slot)
                return None
            raise
        body = response.json()
        if not body.get("limits"):
            raise LookupError(f"global concurrency limit {name!r} does not exist")
        self._lease_renewed[body["lease_id"]] = time.monotonic()
        _ledger_add({"limit": name, "lease": body["lease_id"], "slots": n, "api": str(client.api_url),
                     "pid": os.getpid(), "started": _process_start(), "t": time.time()})
        return body["lease_id"]

    def _renew_leases(self) -> None:
        """Keep held leases alive (they expire after _LEASE_SECONDS unless renewed)."""
        now = time.monotonic()
        for lease_id, renewed in list(self._lease_renewed.items()):
            if now - renewed > _LEASE_SECONDS / 3:
                try:  # patient, but well within the lease's remaining life
                    _patient(self._api().renew_concurrency_lease, lease_id, lease_duration=_LEASE_SECONDS,
                             patience=_LEASE_SECONDS / 4)
                    self._lease_renewed[lease_id] = now
                except Exception as exc:
                    # The server said the lease is gone (expired: its slots went back, or it
                    # died with the server that granted it), or the server cannot be reached.
                    # The ledger entry stays: once this process is gone, the next runner
                    # clears what it still holds (`_clear_stale`); removing it here left
                    # slots held with nothing to say by whom.
                    with self._lock:
                        self._lease_renewed.pop(lease_id, None)
                        lost = []
                        for guard in self._guards.values():
                            for held in [h for h in guard.held if h[0] == lease_id]:
                                guard.held.remove(held)
                                guard.slots -= held[1]
                                lost.append(guard)
                    for guard in lost:
                        logger.warning("could not renew a lease of %s (%s); taking new slots", guard.name, exc)
                        self.adjust(guard.target, guard.busy, guard.name)

    def _api(self) -> Any:
        if self._client is None:
            from prefect.client.orchestration import get_client

            self._client = get_client(sync_client=True)
            self._client.__enter__()
        return self._client

    def _do_keep(self, lease: tuple[Any, int]) -> None:
        _keep(self._server, self.name, [(lease[0], lease[1], self._lease_renewed.pop(lease[0], 0.0))])  # type: ignore[arg-type]

    def _do_release(self, lease_id: Any) -> None:
        self._lease_renewed.pop(lease_id, None)
        _patient(self._api().release_concurrency_slots_with_lease, lease_id)
        _ledger_remove(lease_id)

    def _give_up(self, exc: BaseException, name: str) -> None:
        with self._lock:
            first = name not in self.failures
            if first:
                self.failures[name] = (
                    f"global concurrency limit {name!r} cannot be used ({type(exc).__name__}: {exc}); "
                    "calls that need it do not run unguarded: retry when the Prefect API answers, or run "
                    "with guard='local' (llmorch --no-global-limit) to rely on this flow run's own bound"
                )
        if first:
            logger.error("%s", self.failures[name])
        self._wake()

    def _release_all(self) -> None:
        with self._lock:
            keep: list[tuple[Any, int, float]] = []
            if _keep_seconds() > 0 and self.name and self.name not in self.failures:
                keep = [(lease, n, self._lease_renewed.pop(lease, 0.0)) for lease, n in self._guards[self.name].held]
                self._guards[self.name].held = []
            held = [lease for guard in self._guards.values() for lease in guard.held]
            for guard in self._guards.values():
                guard.held, guard.slots = [], 0
        if keep:
            _keep(self._server, self.name, keep, self.keep_for)  # type: ignore[arg-type]
        for lease_id, _ in held:
            try:
                self._do_release(lease_id)
            except BaseException as exc:  # the lease expires on its own
                logger.debug("releasing a slot: %s", exc)
        if self._client is not None:
            client, self._client = self._client, None
            client.__exit__(None, None, None)


def _quick(call: Any, *args: Any, **kwargs: Any) -> Any:
    """An API call with our own fast retries (20 ms doubling, for up to 3 s) instead of the
    client's 2 s wait after a SQLite server's 503 "database is locked"."""
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    delay, deadline = 0.02, time.monotonic() + 3.0
    while True:
        try:
            if PREFECT_CLIENT_MAX_RETRIES.value() == 0:  # the API thread: set once (see _loop)
                return call(*args, **kwargs)
            with _no_client_retries():
                return call(*args, **kwargs)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code < 500 or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


#: settings object id -> (that settings object, a copy with the client's retries off), the
#: copies themselves included (mapped to themselves: a nested `_no_client_retries` enters
#: nothing new). Made once per settings object, not per request or per runner: Prefect's
#: `temporary_settings` validates a whole new Settings each time, and py-spy found those
#: copies at ~10% of the flow process's GIL time in runs of 100 no-op calls. Keyed by every
#: settings object seen, not only the last: the API thread (inside a copy) and the runner's
#: threads (outside) alternate, and a one-entry cache remade the copy at each switch.
_NO_RETRIES: dict[int, tuple[Any, Any]] = {}
_NO_RETRIES_MAX = 16  # settings objects are few (a profile, a test's temporary settings)
_no_retries_lock = threading.Lock()


@contextmanager
def _no_client_retries() -> Iterator[None]:
    """The current settings with `PREFECT_CLIENT_MAX_RETRIES` 0, as `temporary_settings`
    would enter them, but copied once per settings object (Prefect's `SettingsContext`)."""
    import prefect.context
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    current = prefect.context.get_settings_context()
    settings = current.settings
    with _no_retries_lock:
        made = _NO_RETRIES.get(id(settings))
        if made is None or made[0] is not settings:  # new, or an id reused by a new object
            copy = settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
            if len(_NO_RETRIES) >= _NO_RETRIES_MAX:
                _NO_RETRIES.clear()
            made = _NO_RETRIES[id(settings)] = (settings, copy)
            _NO_RETRIES[id(copy)] = (copy, copy)
    if made[1] is settings:  # already inside a copy
        yield
        return
    with prefect.context.SettingsContext(profile=current.profile, settings=made[1]):
        yield


def _transient(exc: BaseException) -> bool:
    """A failure worth retrying: the server busy (5xx, "database is locked"), the connection lost."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(exc, PrefectHTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, (httpx.TransportError, ConnectionError)) or "database is locked" in str(exc)


def _patient(call: Any, *args: Any, patience: float | None = None, **kwargs: Any) -> Any:
    """`_quick`, retried with backoff (up to 2 s apart) while failures are transient, for up
    to `patience` seconds (`GUARD_PATIENCE_SECONDS`); then the last failure is raised."""
    deadline = time.monotonic() + (GUARD_PATIENCE_SECONDS if patience is None else patience)
    delay, told = 0.1, False
    while True:
        try:
            return _quick(call, *args, **kwargs)
        except BaseException as exc:
            if not _transient(exc) or time.monotonic() + delay > deadline:
                raise
            if not told:
                told = True
                logger.warning("the Prefect API is busy (%s); retrying for up to %.0f s", exc, deadline - time.monotonic())
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


# -- the ledger of leases held by processes of this machine ------------------------------


def _ledger_path() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / "llmorch-leases.json"


@contextmanager
def _ledger() -> Iterator[list[dict[str, Any]]]:
    """The ledger's entries, locked against other processes while the block runs."""
    import fcntl

    path = _ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        try:
            entries = json.loads(f.read() or "[]")
        except ValueError:  # a torn write: start over (leases still expire on their own)
            entries = []
        before = list(entries)
        yield entries
        if entries != before:
            f.seek(0)
            f.truncate()
            f.write(json.dumps(entries))


def _ledger_read() -> list[dict[str, Any]]:
    try:
        with _ledger() as entries:
            return list(entries)
    except OSError as exc:
        logger.debug("lease ledger: %s", exc)
        return []


def _ledger_add(entry: dict[str, Any]) -> None:
    try:
        with _ledger() as entries:
            entries.append(entry)
    except OSError as exc:
        logger.debug("lease ledger: %s", exc)


def _ledger_remove(lease_id: Any) -> None:
    try:
        with _ledger() as entries:
            entries[:] = [e for e in entries if e.get("lease") != str(lease_id)]
    except OSError as exc:
        logger.debug("lease ledger: %s", exc)


def _process_start(pid: int | None = None) -> float:
    import psutil

    try:
        return psutil.Process(pid or os.getpid()).create_time()
    except psutil.Error:
        return 0.0


def _alive(entry: dict[str, Any]) -> bool:
    """Whether the process that took a lease still runs (a reused pid is another process)."""
    import psutil

    pid = int(entry.get("pid") or 0)
    if pid <= 0 or not psutil.pid_exists(pid):
        return False
    started = float(entry.get("started") or 0.0)
    return not started or abs(_process_start(pid) - started) < 1.0
