"""The machine-wide guard: the slots of Prefect global concurrency limits one task runner holds.

A Prefect global concurrency limit (`llmorch-processors`, created with limit P if absent) is
held one slot per processor the flow run uses, so two flow runs on one machine never run more
than P compute calls together; each resource class has a limit of its own (`llmorch-<resource>`,
`schedule.resources.global_limits`). `GlobalLimit` holds them for one `LLMOrchTaskRunner`:

- **Ahead of need, on one thread.** The runner says how many slots of each limit it wants
  (`adjust(target, busy, name)`: all P while calls may still come); one thread of this object
  takes them in leases, renews them, and gives back what is idle beyond the target, so no call
  pays a lease write on its critical path and a busy SQLite server gets one writer, not a
  burst. `wake()` tells the runner when more slots are held.
- **Never dropped silently.** A busy API (503 "database is locked", a dropped connection) is
  asked again, with backoff, for up to `GUARD_PATIENCE_SECONDS`; a limit that cannot be had
  (deleted, the API down that long) sets `failure_of(...)`, and the runner fails the calls
  that need it instead of running them unguarded (`guard="local"` opts out of the limits).
- **Never hold and wait.** Two runs could each hold part of what the other's waiting calls
  need and wait forever; a runner whose calls all wait on a limit others hold gives its idle
  slots back for a random 0.5-2 s (`back_off`).
- **Slots always come back.** Leases expire unless renewed; the runner gives its slots back
  on every way out it lives through; a killed process cannot, so each lease is also written
  to a ledger in PREFECT_HOME (`llmorch-leases.json`: limit, lease, slots, API and which
  server answered there, pid), *before* it is taken (an intent, given its lease id once
  held), and the next runner clears the leases whose process (or embedded server) is gone
  (by lease while the server knows it; by decrementing the slots when the lease died with an
  embedded server, which forgets leases and keeps slots; never those of another server that
  still answers). On its own embedded server, slots no ledger entry explains are held by no
  process: they are given back too (`_clear_unexplained`).
- **Passed on within a process.** The processors' slots a runner gives back are kept for a
  few seconds (`LLMORCH_KEEP_SLOTS_SECONDS`, 5) for this process's next runner, which holds
  them at once, with no API call; `take_ahead` takes them for `run_plan` while Prefect creates
  the flow run.

Prefect's public client API does the requests (`increment_concurrency_slots_with_lease`,
`renew_concurrency_lease`, `release_concurrency_slots_with_lease`, ...). Why not
`prefect.concurrency.sync.concurrency()`: it waits inside the call until every slot is free
(no giving back while waiting, so no back-off across limits), it hides the lease id the ledger
needs, and its acquisition service is one per set of limit names per process, bound to the
API of its first caller (CONTRIBUTING.md).
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from prefect_llmorch.host.process import PROCESS, Stage
from prefect_llmorch.host.server import api_client, server_gone, server_instance, server_key
from prefect_llmorch.storage.leases import (  # the crash ledger
    alive as _alive,
    change as _ledger_write,
    forget_intent as _ledger_forget_intent,
    ledger_path as _ledger_path,
    locked as _ledger,
    process_start as _process_start,
    read as _ledger_read,
    remove as _ledger_remove,
    server_alive as _server_alive,
    settle as _ledger_settle,
)

logger = logging.getLogger("prefect_llmorch.engine.guard")

#: Lease of a limit's slots; renewed every third of it while held.
LEASE_SECONDS = 60.0
#: How long a transient API failure is asked again before the guard fails the calls.
GUARD_PATIENCE_SECONDS = 60.0
#: How soon a full limit is asked again.
FULL_RETRY_SECONDS = 0.5
#: While a run waits on a full limit, how often it looks again for slots no process holds
#: (`_recover`: holders that died meanwhile, slots no ledger entry explains).
RECOVER_SECONDS = 10.0
#: Slots of the processors' limit a runner gives back are kept this long for the next runner
#: of this process (`LLMORCH_KEEP_SLOTS_SECONDS`; 0: give them back at once): back-to-back runs
#: then start their first compute call without a lease write behind the last run's events.
KEEP_SLOTS_SECONDS = 5.0


def _keep_seconds() -> float:
    try:
        return max(float(os.environ.get("LLMORCH_KEEP_SLOTS_SECONDS", KEEP_SLOTS_SECONDS)), 0.0)
    except ValueError:
        return KEEP_SLOTS_SECONDS


@dataclass
class _Lease:
    id: str
    slots: int
    api: str | None  # the API it came from (None: the current one), to give it back there
    renewed: float = field(default_factory=time.monotonic)  # last renewed (monotonic)
    renew_at: float = 0.0  # next renewal due (0: a third of the lease after `renewed`)
    kept: int = 0  # how many times it was kept for a next runner: a keep's timer gives back only its own
    #: the settings it was kept under (a `SettingsContext`, naming its API): a kept lease no
    #: runner took goes back under them, with no settings copy (`_release_alone`)
    settings: Any = field(default=None, repr=False)

    def due(self) -> float:
        return self.renew_at or self.renewed + LEASE_SECONDS / 3


@dataclass
class _Limit:
    """What this runner holds of one limit, and wants."""

    name: str
    capacity: int | None  # the size to create it with (None: P)
    size: int | None = None  # once read
    leases: list[_Lease] = field(default_factory=list)
    target: int = 0
    busy: int = 0
    blocked: bool = False  # the last request found its slots held by other flow runs
    retry_at: float = 0.0  # a full or busy limit is asked again from then (monotonic)
    told_waiting: bool = False
    recover_at: float = 0.0  # while blocked, `_recover` runs again from then (monotonic)

    @property
    def slots(self) -> int:
        return sum(lease.slots for lease in self.leases)

    def idle(self, keep: int) -> list[_Lease]:
        """The leases that can go back while `keep` slots stay held, latest first. A lease
        goes back whole: one of 2 slots while 1 is kept is not idle (waking for it spun the
        guard's thread, thousands of rounds per run, until the run's last call ended)."""
        idle: list[_Lease] = []
        left = self.slots
        for lease in reversed(self.leases):
            if left - lease.slots >= keep:
                idle.append(lease)
                left -= lease.slots
        return idle

    def keep(self, paused: bool) -> int:
        """The slots to hold: the target, or only those in use while backing off."""
        return max(self.busy if paused else self.target, self.busy)

    def has_work(self, paused: bool) -> bool:
        """Whether tending it may do something now: read it, give back idle leases, take
        missing slots."""
        return (self.size is None or bool(self.idle(self.keep(paused)))
                or (not paused and self.slots < min(self.target, self.size)))


@dataclass
class _Spare:
    """This process's spare leases of one processors' limit, and the limit's size."""

    size: int | None = None
    leases: list[_Lease] = field(default_factory=list)
    taking: threading.Thread | None = None


class _Spares:
    """(API, limit) -> what this process keeps between its runners: slots outlive a runner by
    design (as procs.workers' kept pools do). Held by `host.process.PROCESS`, which gives them
    back at exit (stage LEASES, while the server still answers)."""

    def __init__(self) -> None:
        self.by_limit: dict[tuple[str, str], _Spare] = {}
        self.lock = threading.Lock()
        PROCESS.at_exit(Stage.LEASES, _give_back_spare)


def _spares() -> _Spares:
    return PROCESS.hold(_Spares)


def _spare(name: str) -> _Spare:
    spares = _spares()
    with spares.lock:
        return spares.by_limit.setdefault((server_key(), name), _Spare())


def _fresh(lease: _Lease) -> bool:
    return time.monotonic() - lease.renewed < LEASE_SECONDS * 2 / 3


def kept_slots(name: str) -> int:
    """Slots of limit `name` this process keeps for its next runner."""
    spare = _spare(name)
    with _spares().lock:
        return sum(lease.slots for lease in spare.leases if _fresh(lease))


def _keep(name: str, leases: list[_Lease], seconds: float) -> None:
    """Keep these leases for this process's next runner; give back what none took in time."""
    from prefect.context import SettingsContext

    spare = _spare(name)
    settings = SettingsContext.get()
    with _spares().lock:
        spare.leases.extend(leases)
        for lease in leases:
            lease.kept += 1
            lease.settings = settings
    for lease in leases:
        # Only this keep: a lease adopted and kept again since has a later keep of its own (an
        # earlier keep's timer once gave back the slots a later run had just kept).
        timer = threading.Timer(seconds, _give_back_spare, args=(name, lease.id, lease.kept))
        timer.daemon = True
        timer.start()


def _take_spare(name: str, most: int) -> list[_Lease]:
    spare = _spare(name)
    taken: list[_Lease] = []
    with _spares().lock:
        for lease in list(spare.leases):
            if lease.slots <= most and _fresh(lease):
                spare.leases.remove(lease)
                taken.append(lease)
                most -= lease.slots
    return taken


def _give_back_spare(name: str | None = None, lease_id: str | None = None, kept: int | None = None) -> None:
    """Give back kept leases no runner took (all of them at exit); with `kept`, only if the
    lease was not kept again since."""
    mine: list[_Lease] = []
    spares = _spares()
    with spares.lock:
        for (_, n), spare in spares.by_limit.items():
            for lease in [k for k in spare.leases if name in (None, n) and lease_id in (None, k.id) and kept in (None, k.kept)]:
                spare.leases.remove(lease)
                mine.append(lease)
    for lease in mine:  # a context of its own: none of a finished flow run's closed clients
        contextvars.Context().run(_release_alone, lease)


def _release_alone(lease: _Lease) -> None:
    from contextlib import nullcontext

    from prefect.context import SettingsContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    kept = lease.settings
    try:
        if lease.api and kept is not None and _same_api(str(kept.settings.api.url or ""), lease.api):
            # the settings it was kept under: no copy of them (a whole Settings validation, ~25 ms)
            settings: Any = SettingsContext(profile=kept.profile, settings=kept.settings)
        else:
            settings = temporary_settings(updates={PREFECT_API_URL: lease.api}) if lease.api else nullcontext()
        with settings:
            with api_client() as client:
                client.release_concurrency_slots_with_lease(lease.id)
        _ledger_remove(lease.id)
    except Exception as exc:  # it expires on its own, and the ledger clears it
        logger.debug("giving back a kept lease: %s", exc)


def _same_api(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def take_ahead_unless_kept(name: str, processors: int, wait: float = 10.0) -> threading.Thread | None:
    """Take up to `processors` slots of `name` now, on a thread of its own, and keep them for
    this process's next runner: `run_plan` calls it while Prefect creates the flow run, so the
    first compute call does not wait for a lease write. Nothing when keeping is off, when
    slots are kept already, or while another take-ahead of the limit is under way. Best
    effort: on any failure the runner takes its slots itself."""
    if _keep_seconds() <= 0 or kept_slots(name) > 0:
        return None
    spare = _spare(name)

    def take() -> None:
        got = threading.Event()
        limit = GlobalLimit(name, lambda: processors, got.set, keep_for=max(_keep_seconds(), 10.0), ahead=True)
        deadline = time.monotonic() + wait
        with ExitStack() as stack:
            limit.start(stack)
            limit.adjust(processors, 0)
            while not limit.failed and time.monotonic() < deadline and limit.held < min(processors, limit.limit_size or processors):
                got.wait(0.05)
                got.clear()
                limit.adjust(processors, 0)

    with _spares().lock:
        if spare.taking is not None and spare.taking.is_alive():
            return spare.taking
        # in the caller's context: its settings (PREFECT_API_URL) name the server to take them on
        thread = spare.taking = threading.Thread(target=contextvars.copy_context().run, args=(take,), daemon=True,
                                                 name="llmorch-take-ahead")
    thread.start()
    return thread


def _waiting_for_take_ahead(name: str) -> bool:
    spare = _spare(name)
    with _spares().lock:
        return spare.taking is not None and spare.taking.is_alive()


class GlobalLimit:
    """The global limits' slots of one runner, kept by one thread.

    Args:
        name: the processors' limit; None: no machine-wide guard (`slots` is P).
        processors: returns P now (a deployment may lower it before calls come).
        wake: called (from this object's thread) when more slots are held.
        keep_for: how long the processors' slots held at the end are kept for this
            process's next runner (default `LLMORCH_KEEP_SLOTS_SECONDS`).
        ahead: this is `take_ahead_unless_kept`'s own (it waits for no take-ahead).
    """

    def __init__(
        self, name: str | None, processors: Callable[[], int], wake: Callable[[], None],
        keep_for: float | None = None, ahead: bool = False,
    ) -> None:
        self.name = name
        self._processors = processors
        self._wake = wake
        self._keep_for = keep_for
        self._ahead = ahead
        self._cond = threading.Condition(threading.RLock())
        self._limits: dict[str, _Limit] = {name: _Limit(name, None)} if name else {}
        self._failures: dict[str, str] = {}
        self._stopping = False
        self._paused_until = 0.0  # backing off: no slot is taken before this (monotonic)
        self._holder: Any = None
        self._client: Any = None
        self._busy_since: float | None = None  # first transient failure of the current streak
        self._busy_count = 0

    # -- what the runner asks ---------------------------------------------------------
    @property
    def guarded(self) -> bool:
        return bool(self.name)

    @property
    def failed(self) -> str | None:
        with self._cond:
            return next(iter(self._failures.values()), None)

    @property
    def held(self) -> int:
        return self._limits[self.name].slots if self.name else 0

    @property
    def limit_size(self) -> int | None:
        return self._limits[self.name].size if self.name else None

    def names(self) -> list[str]:
        with self._cond:
            return list(self._limits)

    def held_of(self, name: str) -> int | None:
        with self._cond:
            limit = self._limits.get(name)
            return None if limit is None else limit.slots

    def size_of(self, name: str) -> int | None:
        with self._cond:
            limit = self._limits.get(name)
            return None if limit is None else limit.size

    def failure_of(self, names: Iterable[str]) -> str | None:
        with self._cond:
            return next((self._failures[n] for n in names if n in self._failures), None)

    def blocked(self, names: Iterable[str]) -> bool:
        with self._cond:
            return any(self._limits[n].blocked for n in names if n in self._limits)

    def configure(self, limits: Mapping[str, int]) -> None:
        """Guard these limits too (name -> the size to create it with)."""
        if not self.name:
            return
        with self._cond:
            for n, capacity in limits.items():
                self._limits.setdefault(n, _Limit(n, int(capacity)))
            self._cond.notify()

    def adjust(self, target: int, busy: int, name: str | None = None) -> None:
        """Hold `target` slots of limit `name` (default: the processors'), `busy` of them in
        use. Spare slots this process kept are held at once, here; the rest on the thread."""
        name = name or self.name
        with self._cond:
            limit = self._limits.get(name) if name else None
            if limit is None:
                return
            limit.target, limit.busy = target, busy
            adopted = self._adopt(limit)
            # The runner adjusts about three times per call, mostly with nothing to do: waking
            # the thread for each cost a thread switch and its whole round every time.
            if limit.has_work(time.monotonic() < self._paused_until):
                self._cond.notify()
        if adopted:
            self._wake()

    def _adopt(self, limit: _Limit) -> int:
        """Hold the spare slots this process kept of the processors' limit, up to what is
        missing: no API call. Called with the lock held; returns how many."""
        missing = min(limit.target, limit.size or limit.target) - limit.slots
        if limit.name != self.name or missing <= 0 or self._stopping or time.monotonic() < self._paused_until:
            return 0
        adopted = _take_spare(limit.name, missing)
        limit.leases.extend(adopted)
        if adopted:
            limit.blocked = False
            limit.size = limit.size or _spare(limit.name).size
        return sum(lease.slots for lease in adopted)

    def back_off(self) -> None:
        """Give back every idle slot and take none for a random 0.5-2 s (see above)."""
        with self._cond:
            now = time.monotonic()
            if self._stopping or now < self._paused_until or not any(m.slots > m.busy for m in self._limits.values()):
                return
            pause = random.uniform(0.5, 2.0)
            self._paused_until = now + pause
            for limit in self._limits.values():
                limit.blocked = False  # re-learned by the first request after the pause
            self._cond.notify()  # the thread gives back what is idle (`_tend`)
        logger.info("giving back idle slots for %.1f s: other flow runs hold what the waiting calls need", pause)

    def start(self, stack: ExitStack) -> None:
        """Start the thread; closing `stack` stops it, giving every slot back."""
        from prefect.client.schemas.objects import ConcurrencyLeaseHolder
        from prefect.context import FlowRunContext

        run = FlowRunContext.get()
        run_id = run.flow_run.id if run is not None and run.flow_run is not None else uuid.uuid4()
        self._holder = ConcurrencyLeaseHolder(type="flow_run", id=run_id)  # the UI shows who holds them
        thread = threading.Thread(target=contextvars.copy_context().run, args=(self._serve,), daemon=True, name="llmorch-guard")
        thread.start()
        stack.callback(thread.join, 15)
        stack.callback(self._stop)

    def _stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    # -- the thread -------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait(timeout=self._next_wake())
                    if self._stopping:
                        break
                    limits = list(self._limits.values())
                for limit in limits:
                    self._tend(limit)
                self._renew()
        finally:
            self._give_all_back()
            if self._client is not None:
                self._client.__exit__(None, None, None)

    def _next_wake(self) -> float:
        """Seconds until the thread has something to do: a renewal, a retry, the pause's end."""
        now = time.monotonic()
        paused = now < self._paused_until
        due = [now + 1.0, self._paused_until if paused else now + 1.0]
        for m in self._limits.values():
            due += [lease.due() for lease in m.leases]
            if m.name not in self._failures and m.has_work(paused):
                due.append(m.retry_at)
        return min(max(min(due) - now, 0.0), 1.0)

    def _tend(self, limit: _Limit) -> None:
        """One step toward the target: read or create the limit, give back idle slots beyond
        the target (all idle ones while backing off), take missing ones."""
        now = time.monotonic()
        if limit.name in self._failures or now < limit.retry_at:
            return
        try:
            if limit.size is None:
                self._prepare(limit)
            with self._cond:
                paused = now < self._paused_until
                idle = limit.idle(limit.keep(paused))
                for lease in idle:
                    limit.leases.remove(lease)
                adopted = self._adopt(limit)
                missing = min(limit.target, limit.size or 0) - limit.slots
            if adopted:
                self._wake()
            for lease in idle:
                self._let_go(limit, lease)
            if missing > 0 and not paused:
                if limit.name == self.name and not self._ahead and _waiting_for_take_ahead(limit.name):
                    limit.retry_at = now + 0.05  # this process takes them for us: adopt them then
                else:
                    self._acquire(limit, missing)
            self._busy_since = None
        except Exception as exc:  # (no BaseException: a KeyboardInterrupt is not the API's)
            self._failed_request(limit, exc)

    def _prepare(self, limit: _Limit) -> None:
        """Read limit `name`'s size, creating it if absent; clear slots of holders gone."""
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
        from prefect.exceptions import ObjectNotFound

        client = self._api()
        capacity = self._processors() if limit.capacity is None else limit.capacity
        active: int | None = None
        try:
            row = client.read_global_concurrency_limit_by_name(limit.name)
            size, active = row.limit, row.active_slots
            if size < capacity:
                logger.warning("global concurrency limit %r has limit %s: this flow run uses at most %s of its %s",
                               limit.name, size, size, capacity)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit.name, limit=capacity))
                size, active = capacity, 0
            except Exception:  # created meanwhile by another flow run
                size = client.read_global_concurrency_limit_by_name(limit.name).limit
        self._recover(limit.name, active)
        with self._cond:
            limit.size = int(size)
        if limit.name == self.name:
            _spare(limit.name).size = int(size)
        self._wake()  # the runner sizes its targets with it

    def _acquire(self, limit: _Limit, n: int) -> None:
        """One lease of `n` slots; when not free together, one slot."""
        from prefect.exceptions import PrefectHTTPStatusError

        client = self._api()
        api = str(client.api_url)
        for want in dict.fromkeys((n, 1)):
            # The ledger first, the slots second: a process killed between the two leaves an
            # intent (no lease id yet) that explains the slots it may have taken (`_recover`);
            # the other way round it left slots no entry named, which runs then waited on forever.
            intent = uuid.uuid4().hex
            _ledger_write(lambda entries: entries.append({
                "limit": limit.name, "lease": None, "intent": intent, "slots": want, "api": api,
                "server": server_instance(api), "pid": os.getpid(), "started": _process_start(), "t": time.time(),
            }))
            try:
                response = client.increment_concurrency_slots_with_lease(
                    names=[limit.name], slots=want, mode="concurrency", lease_duration=LEASE_SECONDS, holder=self._holder)
            except PrefectHTTPStatusError as exc:  # the server answered: nothing was taken
                _ledger_forget_intent(intent)
                if exc.response.status_code == 423:  # full: held by other flow runs
                    continue
                raise
            # (any other failure, e.g. a lost connection: maybe taken; the intent stays while we live)
            body = response.json()
            if not body.get("limits"):
                _ledger_forget_intent(intent)
                raise LookupError(f"global concurrency limit {limit.name!r} does not exist")
            lease = _Lease(str(body["lease_id"]), want, api)
            _ledger_settle(intent, lease.id)
            with self._cond:
                limit.leases.append(lease)
                limit.blocked = False
            self._wake()
            return
        now = time.monotonic()
        with self._cond:
            limit.blocked = True
            limit.retry_at = now + FULL_RETRY_SECONDS
        self._wake()  # the runner may need to back off
        if limit.slots == 0 and now >= limit.recover_at:
            # holders may have died while we wait (their slots stay in an embedded server's database)
            limit.recover_at = now + RECOVER_SECONDS
            if limit.told_waiting and self._recover(limit.name):
                limit.retry_at = now  # slots came back: ask at once
        if not limit.told_waiting and limit.slots == 0:
            limit.told_waiting = True
            entries = [e for e in _ledger_read() if e.get("limit") == limit.name and _alive(e)]
            holders = sorted({int(e.get("pid") or 0) for e in entries})
            known = sum(int(e.get("slots") or 0) for e in entries)
            logger.warning(
                "waiting for a slot of global concurrency limit %r (limit %s): held by %s. `prefect gcl inspect %s` "
                "shows the limit; slots a crashed run left on another machine come back when its lease expires "
                "(%.0f s); if nothing else should hold them, `prefect gcl update %s --active-slots %s` frees the "
                "others (%s), or run with --no-global-limit",
                limit.name, limit.size,
                (f"llmorch processes {', '.join(map(str, holders))} ({known} slot(s))") if holders
                else "no llmorch process on this machine (another machine, or a Prefect flow of yours)",
                limit.name, LEASE_SECONDS, limit.name, known,
                f"the llmorch processes' {known} stay held" if known else "no llmorch process holds any",
            )

    def _let_go(self, limit: _Limit, lease: _Lease) -> None:
        if limit.name == self.name and _keep_seconds() > 0 and not self._stopping and time.monotonic() >= self._paused_until:
            _keep(limit.name, [lease], self._keep_for or _keep_seconds())
        else:
            self._release(lease)

    def _release(self, lease: _Lease) -> None:
        try:
            self._api().release_concurrency_slots_with_lease(lease.id)
            _ledger_remove(lease.id)
        except Exception as exc:  # it expires on its own; the ledger entry clears it sooner
            logger.debug("releasing a lease: %s", exc)

    def _renew(self) -> None:
        """Keep held leases alive. A busy server is asked again while the lease lives; a
        lease the server no longer knows (expired, or gone with its server) is lost, and the
        runner takes new slots. Its ledger entry stays: once this process is gone the next
        runner clears whatever it still holds."""
        now = time.monotonic()
        for limit in list(self._limits.values()):
            for lease in [lease for lease in limit.leases if now >= lease.due()]:
                try:
                    self._api().renew_concurrency_lease(lease.id, lease_duration=LEASE_SECONDS)
                    lease.renewed, lease.renew_at = now, 0.0
                except Exception as exc:
                    gone = self._gone()
                    if _transient(exc) and not gone and now - lease.renewed < LEASE_SECONDS * 0.8:
                        lease.renew_at = now + 0.5
                        continue
                    with self._cond:
                        if lease in limit.leases:
                            limit.leases.remove(lease)
                    if gone:  # its ledger entry stays: the next run clears the slots the database keeps
                        self._failed_request(limit, exc)
                    else:
                        logger.warning("could not renew a lease of %s (%s); taking new slots", limit.name, exc)

    def _failed_request(self, limit: _Limit, exc: BaseException) -> None:
        """A busy API is asked again, with backoff, up to the patience; then the guard fails.
        (Each request has had the client's own retries by then: PREFECT_CLIENT_MAX_RETRIES.)"""
        now = time.monotonic()
        gone = self._gone()
        if _transient(exc) and gone is None:
            if self._busy_since is None:
                self._busy_since, self._busy_count = now, 0
                logger.warning("the Prefect API is busy (%s); asking again for up to %.0f s", exc, GUARD_PATIENCE_SECONDS)
            if now - self._busy_since < GUARD_PATIENCE_SECONDS:
                self._busy_count += 1
                with self._cond:
                    limit.retry_at = now + min(0.02 * 2 ** min(self._busy_count, 7), 2.0)
                return
        with self._cond:
            first = limit.name not in self._failures
            self._failures[limit.name] = str(gone) if gone is not None else (
                f"global concurrency limit {limit.name!r} cannot be used ({type(exc).__name__}: {exc}); calls that "
                "need it do not run unguarded: retry when the Prefect API answers, or run with guard='local' "
                "(llmorch --no-global-limit) to rely on this flow run's own bound"
            )
        if first and gone is None:  # (a dead server: said once, by host/server.py)
            logger.error("%s", self._failures[limit.name])
        self._wake()

    def _gone(self) -> Any:
        """This process's embedded server, if it is this guard's API and died: its error (no
        use asking again: the dead child is known, unlike a busy server), else None."""
        return server_gone(str(self._client.api_url)) if self._client is not None else None

    def _give_all_back(self) -> None:
        with self._cond:
            held = [(limit, lease) for limit in self._limits.values() for lease in limit.leases]
            for limit in self._limits.values():
                limit.leases = []
        keep = [lease for limit, lease in held if limit.name == self.name and limit.name not in self._failures]
        if keep and _keep_seconds() > 0:
            _keep(self.name, keep, self._keep_for or _keep_seconds())  # type: ignore[arg-type]
            held = [(limit, lease) for limit, lease in held if lease not in keep]
        for _, lease in held:
            self._release(lease)

    def _api(self) -> Any:
        if self._client is None:
            from prefect.client.orchestration import get_client

            self._client = get_client(sync_client=True)
            self._client.__enter__()
        return self._client

    def _recover(self, name: str, active: int | None = None) -> bool:
        """Give back slots of `name` that no process can hold: those of leases whose process
        (or embedded server) is gone (`_clear_gone`), then, on this process's embedded server,
        those no ledger entry explains (`_clear_unexplained`; `active`: the limit's active
        slots as just read, if known). True if any came back."""
        cleared = self._clear_gone(name)
        return self._clear_unexplained(name, None if cleared else active) or cleared

    def _clear_unexplained(self, name: str, active: int | None = None) -> bool:
        """On this process's embedded server (SQLite in PREFECT_HOME), the active slots of
        `name` beyond what the ledger's entries explain are held by no process: give them back.

        Every process of this PREFECT_HOME records a slot in the ledger before it takes it
        (an intent, then its lease), so with the ledger locked, no slot can be taken or
        forgotten meanwhile, and the entries (live holders, intents, leases a live server
        still holds) explain every slot a live process may hold; the rest was left by a
        process killed before it recorded its slots (older versions), a removed ledger, or a
        lease that died with its server. Not on a server at PREFECT_API_URL: its holders may be
        on other machines, whose ledgers we cannot read (a run waiting on them says so, with
        the command that frees them)."""
        from prefect.settings import get_current_settings

        from prefect_llmorch.host.server import serves

        client = self._api()
        database = get_current_settings().server.database.connection_url
        url = database.get_secret_value() if database is not None else "sqlite"
        if not serves(client.api_url) or not url.startswith("sqlite"):
            return False
        if active is not None and active <= sum(int(e.get("slots") or 0) for e in _ledger_read() if e.get("limit") == name):
            return False  # the common case, at a run's start: no look under the lock
        with _ledger() as entries:  # locked: no process takes a slot (intent first) or forgets one meanwhile
            row = client.read_global_concurrency_limit_by_name(name)
            if row.slot_decay_per_second:  # a rate limit: its slots come back on their own
                return False
            explained = sum(int(e.get("slots") or 0) for e in entries if e.get("limit") == name)
            stranded = int(row.active_slots) - explained
            if stranded <= 0:
                return False
            client.release_concurrency_slots([name], stranded, 0.001)
        logger.warning("global concurrency limit %r: cleared %s slot(s) that no process held (%s active, %s held by "
                       "live llmorch processes per %s): left by a process killed before it recorded them, or by a "
                       "removed ledger", name, stranded, row.active_slots, explained, _ledger_path())
        return True

    def _clear_gone(self, name: str) -> bool:
        """Give back the slots of leases of `name` whose process (or embedded server) is gone;
        True if any came back."""
        from prefect.exceptions import PrefectHTTPStatusError

        api = str(self._api().api_url)
        here = server_instance(api)
        cleared = False
        for entry in [e for e in _ledger_read() if e.get("limit") == name and not (_alive(e) and _server_alive(e))]:
            if entry.get("lease") is None:  # an intent whose process died before it had a lease id
                if not _alive(entry):  # (a live one may still get it)
                    # Its slots, if it took them, are unexplained now: on an embedded server
                    # `_clear_unexplained` gives them back; a server with Prefect's services expires them.
                    _ledger_forget_intent(entry.get("intent"))
                continue
            if _another_live_server(entry, api):
                continue  # its lease and slots are that server's, in its own database: not ours to clear
            how = "its lease"
            try:
                self._api().renew_concurrency_lease(entry["lease"], lease_duration=LEASE_SECONDS)
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code not in (404, 410):
                    raise
                if entry.get("server", entry.get("api")) == here:
                    how = ""  # this server expired the lease itself: its slots are back already
                else:  # the lease died with the server that granted it; its slots did not
                    how = "its slots (the server that granted the lease is gone)"
                    held_for = max(time.time() - float(entry.get("t") or 0.0), 0.001)
                    self._api().release_concurrency_slots([name], int(entry["slots"]), held_for)
            else:
                self._api().release_concurrency_slots_with_lease(entry["lease"])
            _ledger_remove(entry["lease"])
            cleared = True
            if how:
                logger.warning("global concurrency limit %r: cleared %s slot(s) left by process %s, %s (cleared %s)",
                               name, entry["slots"], entry.get("pid"),
                               "which is gone" if not _alive(entry) else "whose Prefect server is gone", how)
        return cleared


def _another_live_server(entry: Mapping[str, Any], api: str) -> bool:
    """Whether a ledger entry's lease came from a server other than the one at `api` that
    still answers. Processes of one PREFECT_HOME share the ledger, not always a server: a
    live server at another URL keeps (and expires) its own leases, and a limit of the same
    name here is another limit. A server that no longer answers is what an earlier embedded
    server of this PREFECT_HOME is once its process died: its slots stay in the database we
    share, so those entries are cleared here."""
    other = str(entry.get("api") or "").rstrip("/")
    if not other or _same_api(other, api):
        return False
    import httpx

    try:  # (200: a dead embedded server's tombstone answers 410, `host/server.py`)
        return httpx.get(f"{other}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _transient(exc: BaseException) -> bool:
    """Worth asking again: the server busy (5xx, "database is locked"), the connection lost."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(exc, PrefectHTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, (httpx.TransportError, OSError))

